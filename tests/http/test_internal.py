"""Node protocol v1 over HTTP: HMAC on every call, heartbeats, online, cache, crashes."""

from __future__ import annotations

import json
import logging
import time
from typing import Any
from uuid import UUID, uuid4

import pytest

from flatrender.actors import node
from flatrender.domain.catalog import ProjectSpec, Scene
from flatrender.domain.model import CommandType
from flatrender.domain.signing import node_secret
from flatrender.persistence import catalog, nodes
from tests.conftest import NODE_MASTER_KEY
from tests.helpers import signed_headers


class NodeClient:
    def __init__(self, client: Any, node_id: UUID, secret: str | None = None) -> None:
        self.client = client
        self.node_id = node_id
        self.secret = secret or node_secret(NODE_MASTER_KEY, node_id)

    async def post(self, path: str, body: Any, **sign: Any) -> Any:
        raw = body if isinstance(body, bytes) else json.dumps(body).encode()
        headers = signed_headers(self.secret, "POST", path, raw, **sign)
        return await self.client.post(path, data=raw, headers=headers)

    async def heartbeat(self, **fields: Any) -> Any:
        body = {"cpu_pct": 10, "ram_available_mb": 1000, "ae_running": False, "cache_used_gb": 1}
        body.update(fields)
        return await self.post(f"/v1/internal/nodes/{self.node_id}/heartbeat", body)


@pytest.fixture
async def registered(actor_system) -> UUID:
    node_id = uuid4()
    await actor_system.fleet.register(node_id, nodes.NewNode("a1", "eu", "10.0.0.2", 9000, "2024"))
    return node_id


@pytest.fixture
def agent(client, registered: UUID) -> NodeClient:
    return NodeClient(client, registered)


async def test_signed_heartbeat_is_answered_with_interval_and_commands(
    agent: NodeClient, actor_system
) -> None:
    response = await agent.heartbeat()
    assert response.status_code == 200
    assert await response.get_json() == {"next_heartbeat_in_sec": 5, "pending_commands": []}
    command = await actor_system.fleet.call(
        agent.node_id, lambda r: node.Enqueue(CommandType.CLOSE_AE, {}, r)
    )
    body = await (await agent.heartbeat()).get_json()
    assert body["pending_commands"] == [{"id": str(command.id), "type": "CloseAE"}]
    body = await (await agent.heartbeat(acked_command_ids=[str(command.id)])).get_json()
    assert body["pending_commands"] == []


async def test_missing_signature_is_401(client, registered: UUID) -> None:
    response = await client.post(f"/v1/internal/nodes/{registered}/heartbeat", json={})
    assert response.status_code == 401
    assert (await response.get_json())["error"]["code"] == "unauthorized"


@pytest.mark.parametrize("header", ["garbage", "t=1", "v1=abc", "t=x,v1=y"])
async def test_malformed_signature_is_401(client, registered: UUID, header: str) -> None:
    response = await client.post(
        f"/v1/internal/nodes/{registered}/heartbeat",
        data=b"{}",
        headers={"X-Node-Signature": header, "Content-Type": "application/json"},
    )
    assert response.status_code == 401


async def test_stale_signature_is_401(agent: NodeClient, client) -> None:
    path = f"/v1/internal/nodes/{agent.node_id}/heartbeat"
    # A daemon up for a while (its replay guard refuses what was signed before it started).
    client.app.extensions["flatrender.replays"].started_at = time.time() - 1000
    assert (await agent.post(path, {}, t=int(time.time()) - 301)).status_code == 401
    assert (await agent.post(path, {}, t=int(time.time()) + 301)).status_code == 401
    assert (await agent.post(path, {}, t=int(time.time()) - 290)).status_code == 200


async def test_another_nodes_signature_is_401(client, registered: UUID) -> None:
    impostor = NodeClient(client, registered, secret=node_secret(NODE_MASTER_KEY, uuid4()))
    assert (await impostor.heartbeat()).status_code == 401


async def test_tampered_body_is_401(client, agent: NodeClient) -> None:
    path = f"/v1/internal/nodes/{agent.node_id}/heartbeat"
    headers = signed_headers(agent.secret, "POST", path, b'{"cpu_pct": 1}')
    response = await client.post(path, data=b'{"cpu_pct": 99}', headers=headers)
    assert response.status_code == 401


async def test_unknown_node_is_401_even_with_a_valid_derived_secret(client) -> None:
    stranger = NodeClient(client, uuid4())
    assert (await stranger.heartbeat()).status_code == 401
    response = await client.post("/v1/internal/nodes/not-a-uuid/heartbeat", json={})
    assert response.status_code == 401


@pytest.mark.parametrize(
    "fields",
    [
        {"cpu_pct": "high"},
        {"cpu_pct": 150},
        {"ae_running": "yes"},
        {"current_job_id": "x"},
        {"acked_command_ids": ["nope"]},
        {"node_id": str(uuid4())},
        {"ram_available_mb": -1},
    ],
)
async def test_malformed_heartbeat_is_422_and_leaves_the_node_untouched(
    agent: NodeClient, actor_system, fields: dict[str, Any]
) -> None:
    response = await agent.heartbeat(**fields)
    assert response.status_code == 422
    assert (await response.get_json())["error"]["code"] == "validation_failed"
    view = await actor_system.fleet.call(agent.node_id, node.Inspect)
    assert view.state.status.value == "Offline"
    assert view.last_sample is None


async def test_signed_malformed_json_is_400(agent: NodeClient) -> None:
    response = await agent.post(f"/v1/internal/nodes/{agent.node_id}/heartbeat", b"{nope")
    assert response.status_code == 400


async def test_online_records_versions_capacity_and_cache(agent: NodeClient, db) -> None:
    body = {
        "node_agent_version": "agent-1.2.0",
        "current_ae_version": "2024",
        "available_ae_versions": ["2023", "2024"],
        "ram_gb": 64,
        "cpu_cores": 16,
        "cache_used_gb": 12,
        "cached_template_md5s": ["b" * 32, "a" * 32, "a" * 32],
    }
    response = await agent.post(f"/v1/internal/nodes/{agent.node_id}/online", body)
    assert response.status_code == 200
    row = await nodes.get(db, agent.node_id)
    assert row is not None
    assert row.status.value == "Idle"
    assert row.node_agent_version == "agent-1.2.0"
    assert row.available_ae_versions == ["2023", "2024"]
    assert (row.ram_gb, row.cpu_cores, row.cache_used_gb) == (64, 16, 12)
    assert row.cached_template_md5s == ["a" * 32, "b" * 32]


async def test_cache_updates_keep_the_inventory_current(agent: NodeClient, db) -> None:
    path = f"/v1/internal/nodes/{agent.node_id}/cache-update"
    for action, md5, used in (
        ("Downloaded", "c" * 32, 2),
        ("Downloaded", "d" * 32, 4),
        ("Evicted", "c" * 32, 3),
        ("Failed", "e" * 32, None),
    ):
        body = {"action": action, "aep_file_md5": md5}
        if used is not None:
            body["cache_used_gb"] = used
        assert (await agent.post(path, body)).status_code == 204
    row = await nodes.get(db, agent.node_id)
    assert row is not None
    assert row.cached_template_md5s == ["d" * 32]
    assert row.cache_used_gb == 3
    bad = await agent.post(path, {"action": "Exploded", "aep_file_md5": "x"})
    assert bad.status_code == 422


async def make_job(db, owner: UUID) -> UUID:
    project_id = uuid4()
    spec = ProjectSpec(owner, "P", "f" * 32, "demo://t", "2024", 30, 90, 3.0, [Scene("s", 0, 89)])
    await catalog.upsert(db, project_id, spec)
    job_id = uuid4()
    await db.execute(
        "INSERT INTO render_jobs (id, user_id, saved_project_id, project_version, name, "
        "priority_queue, price_type, quality, resolution, frame_rate, duration_sec, end_frame) "
        "VALUES ($1, $2, $3, 1, 'P', 'Cash', 'Cash', 'High', 'FullHD', 30, 3.0, 89)",
        job_id,
        owner,
        project_id,
    )
    return job_id


async def test_crash_is_recorded_once_and_counted_once(agent: NodeClient, db) -> None:
    job_id = await make_job(db, uuid4())
    path = f"/v1/internal/render/jobs/{job_id}/crash"
    body = {
        "node_id": str(agent.node_id),
        "last_known_frame": 17,
        "crash_signal": "SIGSEGV",
        "ae_version": "2024",
        "error_log_tail": "boom",
        "log_file_url": "s3://logs/1",
    }
    first = await agent.post(path, body)
    assert first.status_code == 200
    answer = await first.get_json()
    assert answer == {"action_recommended": "ReassignWork", "reassigned_to_node_id": None}
    again = await agent.post(path, body)
    assert await again.get_json() == answer
    row = await nodes.get(db, agent.node_id)
    assert row is not None
    assert (row.consecutive_failures, row.lifetime_crash_count) == (1, 1)
    crashes = await nodes.list_crashes(db, agent.node_id)
    assert len(crashes) == 1
    assert crashes[0].render_job_id == job_id and crashes[0].error_log == "boom"


async def test_repeated_crashes_quarantine_the_node(agent: NodeClient, db) -> None:
    job_id = await make_job(db, uuid4())
    await agent.heartbeat()
    for frame in range(3):
        body = {"node_id": str(agent.node_id), "last_known_frame": frame}
        assert (
            await agent.post(f"/v1/internal/render/jobs/{job_id}/crash", body)
        ).status_code == 200
    row = await nodes.get(db, agent.node_id)
    assert row is not None
    assert row.status.value == "Quarantined"
    assert row.accepts_new_jobs is False


async def test_job_calls_need_the_signer_in_the_body(client, agent: NodeClient, db) -> None:
    job_id = await make_job(db, uuid4())
    path = f"/v1/internal/render/jobs/{job_id}/crash"
    raw = json.dumps({"last_known_frame": 1}).encode()
    response = await client.post(
        path, data=raw, headers=signed_headers(agent.secret, "POST", path, raw)
    )
    assert response.status_code == 401


async def test_job_calls_for_an_unknown_job_or_range_are_404(agent: NodeClient, db) -> None:
    body = {"node_id": str(agent.node_id), "frame_job_id": str(uuid4()), "frame_number": 1}
    response = await agent.post(f"/v1/internal/render/jobs/{uuid4()}/frames", body)
    assert response.status_code == 404
    job_id = await make_job(db, uuid4())
    response = await agent.post(f"/v1/internal/render/jobs/{job_id}/frames", body)
    assert response.status_code == 404
    crash = {"node_id": str(agent.node_id), "frame_job_id": str(uuid4())}
    response = await agent.post(f"/v1/internal/render/jobs/{job_id}/crash", crash)
    assert response.status_code == 404


async def test_replica_ready_is_signed_and_validated(agent: NodeClient, db) -> None:
    job_id = await make_job(db, uuid4())
    path = f"/v1/internal/render/jobs/{job_id}/replica-ready"
    assert (await agent.post(path, {"node_id": str(agent.node_id)})).status_code == 422
    project_id = await db.fetchval("SELECT saved_project_id FROM render_jobs WHERE id = $1", job_id)
    ok = {"node_id": str(agent.node_id), "replica_path": f"replicas/{project_id}/1.aep"}
    # The job has no actor (never started): the node is told the work is not its own.
    assert (await agent.post(path, ok)).status_code == 409
    # Any key but the one the job issued is refused before it reaches the job.
    wrong = {**ok, "replica_path": "replicas/x/1.aep"}
    assert (await agent.post(path, wrong)).status_code == 422


async def test_secrets_never_reach_the_logs(agent: NodeClient, caplog) -> None:
    caplog.set_level(logging.DEBUG)
    await agent.heartbeat()
    await agent.post(f"/v1/internal/nodes/{agent.node_id}/heartbeat", {}, t=1)
    assert agent.secret not in caplog.text
    assert NODE_MASTER_KEY not in caplog.text
