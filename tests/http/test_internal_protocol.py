"""Node protocol v1 under hostile input (issue 10): malformed signature headers, replays, the
replica key, and numbers or text no column can hold. Every refusal is a 4xx in the JSON error
format, and the node's and job's actors go on."""

from __future__ import annotations

import json
import time
import types
from typing import Any
from uuid import UUID, uuid4

import pytest
import trio

from flatrender.actors import job, node
from flatrender.domain.model import CommandType, NodeStatus
from flatrender.domain.replay import ReplayGuard
from flatrender.domain.signing import sign
from flatrender.http import codec
from flatrender.http.app import MAX_BODY_BYTES
from flatrender.persistence import job_state, nodes
from flatrender.storage import MinioStore
from tests.http.test_internal import NodeClient, make_job

V1 = "ab" * 32


@pytest.fixture
async def registered(actor_system) -> UUID:
    node_id = uuid4()
    await actor_system.fleet.register(node_id, nodes.NewNode("a1", "eu", "10.0.0.2", 9000, "2024"))
    return node_id


@pytest.fixture
def agent(client, registered: UUID) -> NodeClient:
    return NodeClient(client, registered)


def heartbeat_path(node_id: UUID) -> str:
    return f"/v1/internal/nodes/{node_id}/heartbeat"


IDLE = {"cpu_pct": 3, "ram_available_mb": 1000, "ae_running": False, "cache_used_gb": 1}


def captured(agent: NodeClient, path: str, body: Any, t: int | None = None) -> tuple[bytes, dict]:
    """A request as an eavesdropper would keep it: its bytes and its headers."""
    raw = json.dumps(body).encode()
    stamp = int(time.time()) if t is None else t
    headers = {"X-Node-Signature": sign(agent.secret, stamp, "POST", path, raw)}
    return raw, {**headers, "Content-Type": "application/json"}


async def error_of(response: Any) -> dict[str, Any]:
    body = await response.get_json()
    assert set(body) == {"error"}, body
    assert set(body["error"]) == {"code", "message", "details"}
    error: dict[str, Any] = body["error"]
    return error


async def view(actor_system, node_id: UUID) -> node.NodeView:
    result: node.NodeView = await actor_system.fleet.call(node_id, node.Inspect)
    return result


# ------------------------------------------------------------------ signature header


@pytest.mark.parametrize(
    "header",
    [
        "t=1" + "0" * 400 + ",v1=x",  # issue 10: an OverflowError, a 500
        "t=1" + "0" * 400 + f",v1={V1}",
        "t=" + "9" * 13 + f",v1={V1}",
        f"t=١٧٠٠٠٠٠٠٠٠,v1={V1}",
        "t=1700000000,v1=" + "z" * 64,
        "t=1700000000,v1=" + "a" * 63,
        f"t=1700000000,t=1700000000,v1={V1}",
        f"t=1700000000,v1={V1},v1={V1}",
        f"t=1700000000,,v1={V1}",
        f"t=17000\x0000000,v1={V1}",
        ",",
        "=",
    ],
)
@pytest.mark.parametrize("where", ["nodes", "jobs"])
async def test_a_malformed_signature_header_is_401_in_the_error_format(
    client, registered: UUID, header: str, where: str
) -> None:
    if where == "nodes":
        path, body = heartbeat_path(registered), b"{}"
    else:
        path = f"/v1/internal/render/jobs/{uuid4()}/crash"
        body = json.dumps({"node_id": str(registered)}).encode()
    response = await client.post(
        path, data=body, headers={"X-Node-Signature": header, "Content-Type": "application/json"}
    )
    assert response.status_code == 401
    assert (await error_of(response))["code"] == "unauthorized"


async def test_a_body_that_cannot_name_its_signer_is_401(client, registered: UUID) -> None:
    path = f"/v1/internal/render/jobs/{uuid4()}/crash"
    for raw in (b"[" * 100_000, b'{"node_id": ' + b"1" * 5000 + b"}", b"\xff", b"[]"):
        headers = {"X-Node-Signature": f"t={int(time.time())},v1={V1}"}
        response = await client.post(path, data=raw, headers=headers)
        assert response.status_code == 401
        assert (await error_of(response))["code"] == "unauthorized"


class ParseSpy:
    """Records the work of decoding a body (codec's JSON decoder and its nesting scan), by
    whichever caller: what a request cost before it was refused."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.decoded: list[str] = []
        self.scanned: list[bytes] = []
        nesting_depth = codec.nesting_depth

        def loads(text: str, **hooks: Any) -> Any:
            self.decoded.append(text)
            return json.loads(text, **hooks)

        def scan(raw: bytes) -> int:
            self.scanned.append(raw)
            return nesting_depth(raw)

        decoder = types.SimpleNamespace(
            loads=loads, dumps=json.dumps, JSONDecodeError=json.JSONDecodeError
        )
        monkeypatch.setattr(codec, "json", decoder)
        monkeypatch.setattr(codec, "nesting_depth", scan)


async def test_an_unverified_body_is_refused_before_it_is_decoded(
    agent: NodeClient, client, monkeypatch: pytest.MonkeyPatch
) -> None:
    spy = ParseSpy(monkeypatch)
    path = f"/v1/internal/render/jobs/{uuid4()}/crash"
    named = f'{{"node_id": "{agent.node_id}", '.encode()
    bodies = [
        named + b'"error_log_tail": "' + b"x" * 1_000_000 + b'"}',  # huge, under the cap
        named + b'"x": ' + b"[" * 500_000 + b"]" * 500_000 + b"}",  # deep
        named + b'"crash_signal": "SEG\\u0000V"}',  # NUL
        named + b'"x": "\xff"}',  # not UTF-8
    ]
    for raw in bodies:
        forged = {"X-Node-Signature": f"t={int(time.time())},v1={V1}"}
        response = await client.post(path, data=raw, headers=forged)
        assert response.status_code == 401
        assert (await error_of(response))["code"] == "unauthorized"
    # The signer named twice (nested, say): no one signer, even under a valid signature.
    twice = named + f'"x": {{"node_id": "{agent.node_id}"}}}}'.encode()
    assert (await agent.post(path, twice)).status_code == 401
    assert (spy.decoded, spy.scanned) == ([], [])
    # Signed by the node it names, the same NUL body is decoded: the 422 names the field.
    response = await agent.post(path, bodies[2])
    assert response.status_code == 422
    assert [e["field"] for e in (await error_of(response))["details"]["errors"]] == [
        "$.crash_signal"
    ]
    assert spy.decoded == [bodies[2].decode()]


async def test_a_report_in_another_nodes_name_is_401(
    agent: NodeClient, client, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The node scanned for is nested; the body's own node_id (escaped, so not scanned) is
    # another node's: found out once decoded.
    other = str(uuid4())
    escaped = f"\\u{ord(other[0]):04x}{other[1:]}"
    raw = f'{{"meta": {{"node_id": "{agent.node_id}"}}, "node_id": "{escaped}"}}'.encode()
    assert json.loads(raw)["node_id"] == other
    spy = ParseSpy(monkeypatch)
    response = await agent.post(f"/v1/internal/render/jobs/{uuid4()}/crash", raw)
    assert response.status_code == 401
    assert (await error_of(response))["code"] == "unauthorized"
    assert spy.decoded == [raw.decode()]


@pytest.mark.parametrize("where", ["nodes", "jobs"])
async def test_a_body_past_the_cap_is_413_in_the_error_format(
    agent: NodeClient, where: str
) -> None:
    if where == "nodes":
        path = heartbeat_path(agent.node_id)
    else:
        path = f"/v1/internal/render/jobs/{uuid4()}/crash"
    body = {"node_id": str(agent.node_id), "error_log_tail": "x" * MAX_BODY_BYTES}
    response = await agent.post(path, body)
    assert response.status_code == 413
    assert (await error_of(response))["code"] == "payload_too_large"


# ------------------------------------------------------------------ replays


async def test_a_replayed_idle_heartbeat_is_refused_and_the_busy_nodes_work_stays(
    agent: NodeClient, client, actor_system
) -> None:
    node_id = agent.node_id
    assert (await agent.heartbeat()).status_code == 200
    work = uuid4()
    command = await actor_system.fleet.call(
        node_id,
        lambda r: node.Assign(work, CommandType.RENDER_FRAMES, {"frame_job_id": str(work)}, r),
    )
    acked = await agent.heartbeat(acked_command_ids=[str(command.id)], current_job_id=str(work))
    assert acked.status_code == 200
    # An idle heartbeat, captured on the wire: three idle beats in a row would drop the work.
    raw, headers = captured(agent, heartbeat_path(node_id), IDLE)
    assert (
        await client.post(heartbeat_path(node_id), data=raw, headers=headers)
    ).status_code == 200
    for _ in range(3):
        again = await client.post(heartbeat_path(node_id), data=raw, headers=headers)
        assert again.status_code == 401
        assert (await error_of(again))["code"] == "replayed"
    seen = await view(actor_system, node_id)
    assert seen.state.status is NodeStatus.BUSY
    assert seen.state.busy is True
    # The same body signed afresh (another second) is a new request, and counted as one.
    later = int(time.time()) + 1
    raw, headers = captured(agent, heartbeat_path(node_id), IDLE, t=later)
    assert (
        await client.post(heartbeat_path(node_id), data=raw, headers=headers)
    ).status_code == 200
    assert (await view(actor_system, node_id)).state.busy is True  # two idle beats, not three


async def test_a_replayed_online_is_refused(agent: NodeClient, client, actor_system, db) -> None:
    path = f"/v1/internal/nodes/{agent.node_id}/online"
    body = {"node_agent_version": "agent-1", "current_ae_version": "2024", "cache_used_gb": 2}
    raw, headers = captured(agent, path, body)
    assert (await client.post(path, data=raw, headers=headers)).status_code == 200
    assert (await agent.heartbeat()).status_code == 200
    work = uuid4()
    await actor_system.fleet.call(
        agent.node_id,
        lambda r: node.Assign(work, CommandType.RENDER_FRAMES, {"frame_job_id": str(work)}, r),
    )
    replayed = await client.post(path, data=raw, headers=headers)
    assert replayed.status_code == 401
    assert (await error_of(replayed))["code"] == "replayed"
    seen = await view(actor_system, agent.node_id)
    assert seen.state.busy is True
    assert [c.type for c in seen.commands] == [CommandType.RENDER_FRAMES]


async def test_a_request_signed_before_a_restart_cannot_be_replayed_after_it(
    agent: NodeClient, client, actor_system
) -> None:
    path = heartbeat_path(agent.node_id)
    assert (await agent.heartbeat()).status_code == 200
    work = uuid4()
    await actor_system.fleet.call(
        agent.node_id,
        lambda r: node.Assign(work, CommandType.RENDER_FRAMES, {"frame_job_id": str(work)}, r),
    )
    stamp = int(time.time())
    raw, headers = captured(agent, path, IDLE, t=stamp)
    assert (await client.post(path, data=raw, headers=headers)).status_code == 200
    # The daemon restarts a second later: its replay guard starts empty.
    client.app.extensions["flatrender.replays"] = ReplayGuard(started_at=stamp + 1.5)
    for _ in range(3):
        again = await client.post(path, data=raw, headers=headers)
        assert again.status_code == 401
        assert (await error_of(again))["code"] == "replayed"
    assert (await view(actor_system, agent.node_id)).state.busy is True
    # The node's next request is signed with its current time, and served.
    raw, headers = captured(agent, path, IDLE, t=stamp + 2)
    assert (await client.post(path, data=raw, headers=headers)).status_code == 200


async def test_of_two_identical_requests_in_flight_one_passes(agent: NodeClient, client) -> None:
    raw, headers = captured(agent, heartbeat_path(agent.node_id), IDLE)
    statuses: list[int] = []

    async def send() -> None:
        response = await client.post(heartbeat_path(agent.node_id), data=raw, headers=headers)
        statuses.append(response.status_code)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(send)
        nursery.start_soon(send)
    assert sorted(statuses) == [200, 401]


async def test_a_refused_signature_is_not_remembered(agent: NodeClient, client) -> None:
    path = heartbeat_path(agent.node_id)
    raw, headers = captured(agent, path, IDLE)
    tampered = await client.post(path, data=raw.replace(b"3", b"4"), headers=headers)
    assert tampered.status_code == 401
    assert (await error_of(tampered))["code"] == "unauthorized"
    assert (await client.post(path, data=raw, headers=headers)).status_code == 200


async def test_a_node_past_its_share_of_remembered_signatures_is_429(
    agent: NodeClient, client
) -> None:
    guard = client.app.extensions["flatrender.replays"]
    assert isinstance(guard, ReplayGuard)
    guard.per_node = 3
    for _ in range(3):
        assert (await agent.heartbeat()).status_code == 200
    response = await agent.heartbeat()
    assert response.status_code == 429
    assert (await error_of(response))["code"] == "too_many_requests"
    assert guard.remembered_by(agent.node_id) == 3


async def test_identical_bodies_signed_in_one_second_by_the_test_client_all_pass(
    agent: NodeClient,
) -> None:
    # The helper signs like the agent does: a repeat within the second is dated a second on.
    for _ in range(5):
        assert (await agent.heartbeat()).status_code == 200


# ------------------------------------------------------------------ replica-ready


async def preparing_job(db, actor_system, agent: NodeClient) -> tuple[UUID, str]:
    """A job with no replica yet whose PrepareReplica went to ``agent``: (job id, replica key)."""
    job_id = await make_job(db, uuid4())
    await actor_system.jobs.start_job(job_id)
    with trio.fail_after(10):
        while True:
            answer = await (await agent.heartbeat()).get_json()
            prepare = [c for c in answer["pending_commands"] if c["type"] == "PrepareReplica"]
            if prepare:
                break
            await trio.sleep(0.05)
    [command] = prepare
    await agent.heartbeat(acked_command_ids=[command["id"]], current_job_id=str(job_id))
    assert command["job_id"] == str(job_id)
    return job_id, command["replica_key"]


async def replica_row(db, job_id: UUID) -> Any:
    return await db.fetchrow(
        "SELECT r.storage_key FROM replicas r JOIN render_jobs j "
        "ON r.saved_project_id = j.saved_project_id AND r.project_version = j.project_version "
        "WHERE j.id = $1",
        job_id,
    )


async def job_state_of(actor_system, job_id: UUID) -> Any:
    return await actor_system.jobs.call(job_id, job.Inspect)


async def test_replica_ready_must_name_the_key_the_job_issued(
    agent: NodeClient, actor_system, db, config
) -> None:
    job_id, key = await preparing_job(db, actor_system, agent)
    row = await db.fetchrow(
        "SELECT saved_project_id, project_version FROM render_jobs WHERE id=$1", job_id
    )
    assert key == job_state.replica_key(row["saved_project_id"], row["project_version"])
    store = MinioStore(config.s3)
    stolen = f"exports/{uuid4()}/video.mp4"  # another customer's export: it exists
    await store.put_bytes(stolen, b"someone else's video")
    path = f"/v1/internal/render/jobs/{job_id}/replica-ready"
    for wrong in (stolen, "", "replicas/../" + key, key + "\x00", key.upper()):
        response = await agent.post(path, {"node_id": str(agent.node_id), "replica_path": wrong})
        assert response.status_code == 422, wrong
        error = await error_of(response)
        assert [e["field"] for e in error["details"]["errors"]] == ["$.replica_path"]
    assert await replica_row(db, job_id) is None
    state = await job_state_of(actor_system, job_id)  # the actor lives, and waits as it did
    assert state.step.value == "Preparing"
    assert state.replica_key is None
    assert await db.fetchval("SELECT replica_key FROM render_jobs WHERE id = $1", job_id) is None
    assert await store.stat(stolen) is not None

    await store.put_bytes(key, b"the replica")
    body = {"node_id": str(agent.node_id), "replica_path": key, "replica_md5": "0" * 32}
    assert (await agent.post(path, body)).status_code == 204
    assert (await replica_row(db, job_id))["storage_key"] == key
    assert (await job_state_of(actor_system, job_id)).replica_key == key


async def test_replica_ready_for_an_unknown_job_is_404(agent: NodeClient) -> None:
    path = f"/v1/internal/render/jobs/{uuid4()}/replica-ready"
    body = {"node_id": str(agent.node_id), "replica_path": "replicas/x/1.aep"}
    assert (await agent.post(path, body)).status_code == 404


# ------------------------------------------------------------------ bounded numbers and text

BIG = 2**31
JOB = uuid4()

ONLINE = {"node_agent_version": "a", "current_ae_version": "2024"}
CACHE = {"action": "Downloaded", "aep_file_md5": "a" * 32}
FRAME = {"frame_job_id": str(JOB), "frame_number": 1}

POISON = [
    # (endpoint, body, the field named)
    ("heartbeat", {**IDLE, "cache_used_gb": BIG}, "$.cache_used_gb"),
    ("heartbeat", {**IDLE, "ram_available_mb": BIG}, "$.ram_available_mb"),
    ("heartbeat", {**IDLE, "current_frame": BIG}, "$.current_frame"),
    ("heartbeat", {**IDLE, "current_frame": -1}, "$.current_frame"),
    ("heartbeat", {**IDLE, "cpu_pct": -1}, "$.cpu_pct"),
    ("heartbeat", {**IDLE, "status": "Idle\x00"}, "$.status"),
    ("heartbeat", {**IDLE, "status": "\ud800"}, "$.status"),
    ("heartbeat", {**IDLE, "recorded_at": "0001-01-01T00:00:00+05:00"}, "$.recorded_at"),
    ("online", {**ONLINE, "ram_gb": BIG}, "$.ram_gb"),
    ("online", {**ONLINE, "cpu_cores": -1}, "$.cpu_cores"),
    ("online", {**ONLINE, "cache_used_gb": BIG}, "$.cache_used_gb"),
    ("online", {**ONLINE, "node_agent_version": "a\udfff"}, "$.node_agent_version"),
    ("online", {**ONLINE, "available_ae_versions": ["\x00"]}, "$.available_ae_versions"),
    ("online", {**ONLINE, "cached_template_md5s": ["a" * 65]}, "$.cached_template_md5s"),
    ("cache-update", {**CACHE, "cache_used_gb": BIG}, "$.cache_used_gb"),  # issue 10
    ("cache-update", {**CACHE, "aep_file_md5": "a\x00"}, "$.aep_file_md5"),
    ("cache-update", {**CACHE, "aep_file_md5": ""}, "$.aep_file_md5"),
    ("cache-update", {**CACHE, "file_size_bytes": 2**63}, "$.file_size_bytes"),
    ("cache-update", {**CACHE, "error_message": "\ud800"}, "$.error_message"),
    ("crash", {"last_known_frame": BIG}, "$.last_known_frame"),
    ("crash", {"last_known_frame": -2}, "$.last_known_frame"),
    ("crash", {"crash_signal": "SEGV\x00"}, "$.crash_signal"),
    ("crash", {"ae_version": "\x00"}, "$.ae_version"),
    ("crash", {"error_log_tail": "boom \udfff"}, "$.error_log_tail"),
    ("crash", {"log_file_url": "s3://" + "x" * 3000}, "$.log_file_url"),
    ("frames", {**FRAME, "frame_number": BIG}, "$.frame_number"),
    ("frames", {**FRAME, "frame_number": -1}, "$.frame_number"),
    ("frames", {**FRAME, "file_size_bytes": -1}, "$.file_size_bytes"),
    ("frames", {**FRAME, "completed_at": "9999-12-31T23:59:59-05:00"}, "$.completed_at"),
    ("replica-ready", {"replica_path": "r", "replica_md5": "\x00"}, "$.replica_md5"),
]


def poison_path(endpoint: str, node_id: UUID) -> str:
    if endpoint in ("heartbeat", "online", "cache-update"):
        return f"/v1/internal/nodes/{node_id}/{endpoint}"
    return f"/v1/internal/render/jobs/{uuid4()}/{endpoint}"


@pytest.mark.parametrize(("endpoint", "body", "field"), POISON)
async def test_a_value_no_column_can_hold_is_422_naming_the_field_and_the_actor_goes_on(
    agent: NodeClient, actor_system, db, endpoint: str, body: dict[str, Any], field: str
) -> None:
    assert (await agent.heartbeat()).status_code == 200
    before = await reported(db, agent.node_id)
    if endpoint in ("crash", "frames", "replica-ready"):
        body = {"node_id": str(agent.node_id), **body}
    response = await agent.post(poison_path(endpoint, agent.node_id), body)
    assert response.status_code == 422
    error = await error_of(response)
    assert error["code"] == "validation_failed"
    fields = [e["field"] for e in error["details"]["errors"]]
    assert any(f == field or f.startswith(field + "[") for f in fields), fields
    assert await reported(db, agent.node_id) == before
    assert await nodes.list_crashes(db, agent.node_id) == []
    assert (await agent.heartbeat(cache_used_gb=7)).status_code == 200  # its actor goes on
    sample = (await view(actor_system, agent.node_id)).last_sample
    assert sample is not None and sample.cache_used_gb == 7


async def reported(db, node_id: UUID) -> tuple[Any, ...]:
    """What /online, cache-update and crash reports write (heartbeats are written in batches)."""
    row = await nodes.get(db, node_id)
    assert row is not None
    return (
        row.node_agent_version,
        row.available_ae_versions,
        row.ram_gb,
        row.cpu_cores,
        row.cached_template_md5s,
        row.lifetime_crash_count,
        row.consecutive_failures,
    )


async def test_the_largest_values_the_columns_hold_are_accepted(agent: NodeClient, db) -> None:
    top = 2**31 - 1
    response = await agent.heartbeat(cache_used_gb=top, ram_available_mb=top, current_frame=top)
    assert response.status_code == 200
    path = f"/v1/internal/nodes/{agent.node_id}/cache-update"
    body = {"action": "Downloaded", "aep_file_md5": "c" * 32, "cache_used_gb": top}
    assert (await agent.post(path, {**body, "file_size_bytes": 2**63 - 1})).status_code == 204
    row = await nodes.get(db, agent.node_id)
    assert row is not None and row.cache_used_gb == top
