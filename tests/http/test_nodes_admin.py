"""Node pool administration over HTTP, against PostgreSQL and the real actor system."""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID, uuid4

import pytest

from flatrender.actors import node
from flatrender.actors.system import ActorSystem
from flatrender.clock import utc_now
from flatrender.domain import signing
from flatrender.domain.model import CommandType, HealthSample
from flatrender.http.codec import unstructure_datetime
from flatrender.http.common import AppState
from tests.conftest import NODE_MASTER_KEY
from tests.helpers import Tokens, bearer

NODE_ROUTES = [
    ("GET", "/v1/nodes/{}"),
    ("PATCH", "/v1/nodes/{}"),
    ("POST", "/v1/nodes/{}/restart"),
    ("POST", "/v1/nodes/{}/close-ae"),
    ("POST", "/v1/nodes/{}/release"),
    ("GET", "/v1/nodes/{}/health"),
    ("GET", "/v1/nodes/{}/health/history"),
    ("GET", "/v1/nodes/{}/crashes"),
]
ALL_ROUTES = [("GET", "/v1/nodes"), ("POST", "/v1/nodes"), *NODE_ROUTES]
# Recent enough that the Reaper (retention, downsampling after 24 h) leaves the samples alone.
T0 = (datetime.now(UTC) - timedelta(hours=2)).replace(minute=0, second=0, microsecond=0)
DAY = T0.strftime("%Y-%m-%d")
HOUR = T0.hour


def at(minute: int, second: int = 0) -> str:
    return f"{DAY}T{HOUR:02d}:{minute:02d}:{second:02d}"


def hm(minute: int) -> str:
    return f"{HOUR:02d}:{minute:02d}"


def node_body(**changes: Any) -> dict[str, Any]:
    body = {
        "name": f"node-{uuid4().hex[:8]}",
        "region": "eu-west",
        "node_ip": "10.0.0.7",
        "worker_port": 7000,
        "current_ae_version": "24.1",
    }
    body.update(changes)
    return body


async def register(client: Any, tokens: Tokens, **changes: Any) -> dict[str, Any]:
    response = await client.post("/v1/nodes", json=node_body(**changes), headers=admin(tokens))
    assert response.status_code == 201, await response.get_json()
    data: dict[str, Any] = await response.get_json()
    return data


def admin(tokens: Tokens) -> dict[str, str]:
    return bearer(tokens.admin)


async def send(client: Any, method: str, path: str, headers: dict[str, str]) -> Any:
    json_body = {} if method in ("POST", "PATCH") else None
    if path == "/v1/nodes" and method == "POST":
        json_body = node_body()
    return await client.open(path, method=method, json=json_body, headers=headers)


async def beat(system: ActorSystem, node_id: UUID, **changes: Any) -> HealthSample:
    fields: dict[str, Any] = {
        "node_id": node_id,
        "recorded_at": utc_now(),
        "status": "",
        "cpu_pct": 37,
        "ram_available_mb": 12000,
        "ae_running": True,
        "current_job_id": None,
        "current_frame": None,
        "cache_used_gb": 3,
    }
    sample = HealthSample(**{**fields, **changes})
    await system.fleet.call(node_id, lambda r: node.Heartbeat(sample, (), r))
    return sample


async def inspect(system: ActorSystem, node_id: UUID) -> node.NodeView:
    view = await system.fleet.call(node_id, node.Inspect)
    assert isinstance(view, node.NodeView)
    return view


async def get_node(client: Any, tokens: Tokens, node_id: str) -> dict[str, Any]:
    response = await client.get(f"/v1/nodes/{node_id}", headers=admin(tokens))
    assert response.status_code == 200
    data: dict[str, Any] = await response.get_json()
    return data


async def error_of(response: Any, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, await response.get_data(as_text=True)
    error: dict[str, Any] = (await response.get_json())["error"]
    assert error["code"] == code
    return error


def fields_of(error: dict[str, Any]) -> set[str]:
    return {e["field"] for e in error["details"]["errors"]}


# ------------------------------------------------------------------ auth, 404, 422, 503


@pytest.mark.parametrize(("method", "path"), ALL_ROUTES)
async def test_every_route_needs_a_token_and_refuses_users(
    client: Any, tokens: Tokens, actor_system: ActorSystem, method: str, path: str
) -> None:
    path = path.format(uuid4())
    await error_of(await send(client, method, path, {}), 401, "unauthorized")
    await error_of(await send(client, method, path, bearer(tokens.user)), 403, "forbidden")


@pytest.mark.parametrize(("method", "path"), NODE_ROUTES)
async def test_unknown_node_is_404_on_every_route(
    client: Any, tokens: Tokens, actor_system: ActorSystem, method: str, path: str
) -> None:
    missing = uuid4()
    response = await send(client, method, path.format(missing), admin(tokens))
    error = await error_of(response, 404, "not_found")
    assert error["details"]["id"] == str(missing)


@pytest.mark.parametrize(("method", "path"), NODE_ROUTES)
async def test_non_uuid_node_id_is_422_on_every_route(
    client: Any, tokens: Tokens, actor_system: ActorSystem, method: str, path: str
) -> None:
    response = await send(client, method, path.format("gpu-01"), admin(tokens))
    error = await error_of(response, 422, "validation_failed")
    assert fields_of(error) == {"node_id"}


async def test_service_token_has_full_access(
    client: Any, tokens: Tokens, actor_system: ActorSystem
) -> None:
    created = await client.post("/v1/nodes", json=node_body(), headers=bearer(tokens.service))
    assert created.status_code == 201
    node_id = (await created.get_json())["id"]
    got = await client.get(f"/v1/nodes/{node_id}", headers=bearer(tokens.service))
    assert got.status_code == 200


async def test_actor_routes_are_503_without_actor_system_but_reads_work(
    client: Any, tokens: Tokens, app_state: AppState
) -> None:
    app_state.actors = None  # the daemon before its actor system is up
    for method, path in (("POST", "/v1/nodes"), *NODE_ROUTES[1:5]):
        response = await send(client, method, path.format(uuid4()), admin(tokens))
        await error_of(response, 503, "service_unavailable")
    listed = await client.get("/v1/nodes", headers=admin(tokens))
    assert listed.status_code == 200
    assert (await listed.get_json()) == {"data": []}


# ------------------------------------------------------------------ register, list, detail


async def test_register_returns_node_with_secret_and_starts_its_actor(
    client: Any, tokens: Tokens, actor_system: ActorSystem
) -> None:
    owner = uuid4()
    body = node_body(ram_gb=64, cpu_cores=16, owner_user_id=str(owner), priority=5)
    response = await client.post("/v1/nodes", json=body, headers=admin(tokens))
    assert response.status_code == 201
    created = await response.get_json()
    node_id = UUID(created["id"])
    assert node_id.version == 4
    assert response.headers["Location"] == f"/v1/nodes/{node_id}"
    assert created["node_secret"] == signing.node_secret(NODE_MASTER_KEY, node_id)
    for key in ("name", "region", "node_ip", "worker_port", "current_ae_version", "ram_gb"):
        assert created[key] == body[key]
    assert created["owner_user_id"] == str(owner)
    assert created["priority"] == 5 and created["cpu_cores"] == 16
    assert created["status"] == "Offline"
    assert created["node_kind"] == "Shared"
    assert created["is_active"] is True and created["accepts_new_jobs"] is True
    assert created["cached_template_count"] == 0
    assert "last_heartbeat_at" not in created  # not nullable in the contract: absent until known
    assert actor_system.fleet.knows(node_id)
    assert (await inspect(actor_system, node_id)).state.status.value == "Offline"


async def test_registered_secret_signs_the_node_protocol(
    client: Any, tokens: Tokens, actor_system: ActorSystem
) -> None:
    created = await register(client, tokens)
    path = f"/v1/internal/nodes/{created['id']}/heartbeat"
    raw = json.dumps({"cpu_pct": 5, "ram_available_mb": 100}).encode()
    header = signing.sign(created["node_secret"], int(time.time()), "POST", path, raw)
    response = await client.post(
        path,
        data=raw,
        headers={signing.HEADER: header, "Content-Type": "application/json"},
    )
    assert response.status_code == 200
    assert (await get_node(client, tokens, created["id"]))["status"] == "Idle"


async def test_duplicate_name_is_409(
    client: Any, tokens: Tokens, actor_system: ActorSystem
) -> None:
    await register(client, tokens, name="gpu-01")
    response = await client.post(
        "/v1/nodes", json=node_body(name="gpu-01", region="us-east"), headers=admin(tokens)
    )
    error = await error_of(response, 409, "node_name_taken")
    assert error["details"]["name"] == "gpu-01"


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"name": ""}, "$.name"),
        ({"region": "  "}, "$.region"),
        ({"current_ae_version": ""}, "$.current_ae_version"),
        ({"node_kind": ""}, "$.node_kind"),
        ({"node_ip": "not-an-ip"}, "$.node_ip"),
        ({"worker_port": 0}, "$.worker_port"),
        ({"worker_port": 65536}, "$.worker_port"),
        ({"worker_port": "7000"}, "$.worker_port"),
        ({"cpu_cores": -1}, "$.cpu_cores"),
        ({"ram_gb": 2**40}, "$.ram_gb"),
        ({"priority": 1.5}, "$.priority"),
        ({"owner_user_id": "bob"}, "$.owner_user_id"),
        ({"name": None}, "$.name"),
        ({"name": "a\x00b"}, "$.name"),
    ],
)
async def test_invalid_registration_is_422(
    client: Any, tokens: Tokens, actor_system: ActorSystem, changes: dict[str, Any], field: str
) -> None:
    response = await client.post("/v1/nodes", json=node_body(**changes), headers=admin(tokens))
    error = await error_of(response, 422, "validation_failed")
    assert field in fields_of(error)
    assert (await (await client.get("/v1/nodes", headers=admin(tokens))).get_json())["data"] == []


async def test_registration_missing_required_field_is_422(
    client: Any, tokens: Tokens, actor_system: ActorSystem
) -> None:
    body = node_body()
    del body["worker_port"]
    response = await client.post("/v1/nodes", json=body, headers=admin(tokens))
    assert "$.worker_port" in fields_of(await error_of(response, 422, "validation_failed"))


async def test_list_filters_by_region_and_status(
    client: Any, tokens: Tokens, actor_system: ActorSystem
) -> None:
    a = await register(client, tokens, name="a", region="eu-west")
    b = await register(client, tokens, name="b", region="eu-west")
    c = await register(client, tokens, name="c", region="us-east")
    await beat(actor_system, UUID(b["id"]))

    async def names(query: str) -> list[str]:
        response = await client.get(f"/v1/nodes{query}", headers=admin(tokens))
        assert response.status_code == 200
        return [n["name"] for n in (await response.get_json())["data"]]

    assert await names("") == ["a", "b", "c"]
    assert await names("?region=eu-west") == ["a", "b"]
    assert await names("?status=Idle") == ["b"]
    assert await names("?status=Offline") == ["a", "c"]
    assert await names("?region=us-east&status=Offline") == ["c"]
    assert await names("?region=us-east&status=Idle") == []
    assert await names("?region=mars") == []
    assert {a["id"], c["id"]} <= {n["id"] for n in await _data(client, tokens, "/v1/nodes")}


async def _data(client: Any, tokens: Tokens, path: str) -> list[dict[str, Any]]:
    data: list[dict[str, Any]] = (await (await client.get(path, headers=admin(tokens))).get_json())[
        "data"
    ]
    return data


async def test_list_with_unknown_status_is_422(client: Any, tokens: Tokens) -> None:
    response = await client.get("/v1/nodes?status=Sleeping", headers=admin(tokens))
    error = await error_of(response, 422, "validation_failed")
    assert fields_of(error) == {"status"}


async def test_detail_has_every_field(
    client: Any, tokens: Tokens, actor_system: ActorSystem
) -> None:
    created = await register(client, tokens)
    detail = await get_node(client, tokens, created["id"])
    for key, value in created.items():
        if key != "node_secret":
            assert detail[key] == value, key
    assert "node_secret" not in detail
    assert detail["available_ae_versions"] == ["24.1"]
    assert detail["cached_template_md5s"] == []
    assert "last_maintenance_at" not in detail  # not nullable in the contract
    assert detail["next_maintenance_at"] is None
    assert detail["maintenance_reason"] is None


# ------------------------------------------------------------------ patch


@pytest.mark.parametrize(
    "when", ["0001-01-01T00:00:00+14:00", "9999-12-31T23:59:59-14:00", "1969-12-31T23:59:59Z"]
)
async def test_a_maintenance_time_out_of_range_is_422_naming_it(
    client: Any, tokens: Tokens, actor_system: ActorSystem, when: str
) -> None:
    created = await register(client, tokens)
    response = await client.patch(
        f"/v1/nodes/{created['id']}", json={"next_maintenance_at": when}, headers=admin(tokens)
    )
    assert response.status_code == 422
    error = (await response.get_json())["error"]
    assert error["code"] == "validation_failed"
    assert [e["field"] for e in error["details"]["errors"]] == ["$.next_maintenance_at"]
    assert (await get_node(client, tokens, created["id"]))["next_maintenance_at"] is None


async def test_maintenance_in_the_past_holds_an_idle_node_until_cleared(
    client: Any, tokens: Tokens, actor_system: ActorSystem
) -> None:
    created = await register(client, tokens)
    node_id = created["id"]
    await beat(actor_system, UUID(node_id))
    assert (await get_node(client, tokens, node_id))["status"] == "Idle"
    due = "2020-01-01T00:00:00Z"
    response = await client.patch(
        f"/v1/nodes/{node_id}",
        json={"next_maintenance_at": due, "maintenance_reason": "disk swap"},
        headers=admin(tokens),
    )
    assert response.status_code == 200
    patched = await response.get_json()
    assert patched["status"] == "Maintenance"
    assert patched["next_maintenance_at"] == due
    assert patched["maintenance_reason"] == "disk swap"
    assert (await inspect(actor_system, UUID(node_id))).state.status.value == "Maintenance"

    response = await client.patch(
        f"/v1/nodes/{node_id}",
        json={"next_maintenance_at": None, "maintenance_reason": None},
        headers=admin(tokens),
    )
    cleared = await response.get_json()
    assert cleared["status"] == "Idle"
    assert cleared["next_maintenance_at"] is None
    assert cleared["maintenance_reason"] is None
    assert cleared["last_maintenance_at"] is not None


async def test_maintenance_in_the_future_keeps_the_node_idle(
    client: Any, tokens: Tokens, actor_system: ActorSystem
) -> None:
    node_id = (await register(client, tokens))["id"]
    await beat(actor_system, UUID(node_id))
    later = unstructure_datetime(utc_now() + timedelta(days=2))
    response = await client.patch(
        f"/v1/nodes/{node_id}", json={"next_maintenance_at": later}, headers=admin(tokens)
    )
    patched = await response.get_json()
    assert patched["status"] == "Idle"
    assert datetime.fromisoformat(patched["next_maintenance_at"]) == datetime.fromisoformat(later)


async def test_patched_fields_persist(
    client: Any, tokens: Tokens, actor_system: ActorSystem
) -> None:
    node_id = (await register(client, tokens))["id"]
    owner = str(uuid4())
    changes = {
        "priority": 9,
        "accepts_new_jobs": False,
        "is_active": False,
        "node_kind": "Dedicated",
        "owner_user_id": owner,
        "nonsense": "ignored",
    }
    response = await client.patch(f"/v1/nodes/{node_id}", json=changes, headers=admin(tokens))
    assert response.status_code == 200
    got = await get_node(client, tokens, node_id)
    assert got["priority"] == 9
    assert got["accepts_new_jobs"] is False and got["is_active"] is False
    assert got["node_kind"] == "Dedicated"
    assert got["owner_user_id"] == owner
    assert "nonsense" not in got

    # Absent keys leave fields alone; null clears the owner.
    await client.patch(f"/v1/nodes/{node_id}", json={"priority": 2}, headers=admin(tokens))
    got = await get_node(client, tokens, node_id)
    assert got["priority"] == 2 and got["owner_user_id"] == owner
    await client.patch(f"/v1/nodes/{node_id}", json={"owner_user_id": None}, headers=admin(tokens))
    got = await get_node(client, tokens, node_id)
    assert got["owner_user_id"] is None and got["priority"] == 2


async def test_empty_patch_changes_nothing(
    client: Any, tokens: Tokens, actor_system: ActorSystem
) -> None:
    node_id = (await register(client, tokens, priority=4))["id"]
    before = await get_node(client, tokens, node_id)
    response = await client.patch(f"/v1/nodes/{node_id}", json={}, headers=admin(tokens))
    assert response.status_code == 200
    assert await response.get_json() == before


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"priority": "5"}, "$.priority"),
        ({"priority": None}, "$.priority"),
        ({"priority": 2**31}, "$.priority"),
        ({"is_active": "yes"}, "$.is_active"),
        ({"accepts_new_jobs": 1}, "$.accepts_new_jobs"),
        ({"node_kind": ""}, "$.node_kind"),
        ({"owner_user_id": "bob"}, "$.owner_user_id"),
        ({"next_maintenance_at": "tomorrow"}, "$.next_maintenance_at"),
        ({"next_maintenance_at": "2024-05-01T12:00:00"}, "$.next_maintenance_at"),
        ({"maintenance_reason": 3}, "$.maintenance_reason"),
        (["priority"], "$"),
    ],
)
async def test_invalid_patch_is_422_and_changes_nothing(
    client: Any, tokens: Tokens, actor_system: ActorSystem, body: Any, field: str
) -> None:
    node_id = (await register(client, tokens))["id"]
    before = await get_node(client, tokens, node_id)
    response = await client.patch(f"/v1/nodes/{node_id}", json=body, headers=admin(tokens))
    assert field in fields_of(await error_of(response, 422, "validation_failed"))
    assert await get_node(client, tokens, node_id) == before


async def test_patch_without_json_is_400(
    client: Any, tokens: Tokens, actor_system: ActorSystem
) -> None:
    node_id = (await register(client, tokens))["id"]
    response = await client.patch(f"/v1/nodes/{node_id}", data=b"{", headers=admin(tokens))
    await error_of(response, 400, "malformed_json")


# ------------------------------------------------------------------ commands


async def test_commands_are_queued_for_the_next_heartbeat(
    client: Any, tokens: Tokens, actor_system: ActorSystem
) -> None:
    node_id = (await register(client, tokens))["id"]
    restart = await client.post(f"/v1/nodes/{node_id}/restart", headers=admin(tokens))
    assert restart.status_code == 202
    command_id = UUID((await restart.get_json())["command_id"])
    close = await client.post(f"/v1/nodes/{node_id}/close-ae", headers=admin(tokens))
    assert close.status_code == 204 and await close.get_data() == b""
    release = await client.post(f"/v1/nodes/{node_id}/release", headers=admin(tokens))
    assert release.status_code == 204

    view = await inspect(actor_system, UUID(node_id))
    assert [c.type for c in view.commands] == [
        CommandType.RESTART,
        CommandType.CLOSE_AE,
        CommandType.RELEASE,
    ]
    assert view.commands[0].id == command_id
    answer = await actor_system.fleet.call(
        UUID(node_id), lambda r: node.Heartbeat(_sample(UUID(node_id)), (), r)
    )
    assert [c.wire()["type"] for c in answer.commands] == ["Restart", "CloseAE", "Release"]


def _sample(node_id: UUID) -> HealthSample:
    return HealthSample(node_id, utc_now(), "", 1, 1, False, None, None, 0)


# ------------------------------------------------------------------ health and crashes


async def test_health_is_the_last_heartbeat(
    client: Any, tokens: Tokens, actor_system: ActorSystem
) -> None:
    node_id = (await register(client, tokens))["id"]
    path = f"/v1/nodes/{node_id}/health"
    error = await error_of(await client.get(path, headers=admin(tokens)), 404, "not_found")
    assert error["message"] == "no heartbeat recorded yet"

    await beat(actor_system, UUID(node_id), cpu_pct=10)
    job = uuid4()
    sample = await beat(
        actor_system, UUID(node_id), cpu_pct=81, current_job_id=job, current_frame=120
    )
    response = await client.get(path, headers=admin(tokens))
    assert response.status_code == 200
    assert await response.get_json() == {
        "node_id": node_id,
        "recorded_at": unstructure_datetime(sample.recorded_at),
        "status": "Busy",
        "cpu_pct": 81,
        "ram_available_mb": 12000,
        "ae_running": True,
        "current_job_id": str(job),
        "current_frame": 120,
        "cache_used_gb": 3,
    }


async def test_health_falls_back_to_the_stored_history(
    client: Any, tokens: Tokens, actor_system: ActorSystem, db: Any
) -> None:
    node_id = UUID((await register(client, tokens))["id"])
    await insert_samples(db, node_id, [T0, T0 + timedelta(seconds=5)])
    response = await client.get(f"/v1/nodes/{node_id}/health", headers=admin(tokens))
    assert response.status_code == 200
    assert (await response.get_json())["recorded_at"] == at(0, 5) + "Z"


async def insert_samples(db: Any, node_id: UUID, times: list[datetime]) -> None:
    for i, at in enumerate(times):
        await db.execute(
            "INSERT INTO node_health_samples (node_id, recorded_at, status, cpu_pct,"
            " ram_available_mb, ae_running, cache_used_gb) VALUES ($1, $2, 'Idle', $3, 100,"
            " false, 1)",
            node_id,
            at,
            i,
        )


async def test_history_is_newest_first_within_from_and_to(
    client: Any, tokens: Tokens, actor_system: ActorSystem, db: Any
) -> None:
    node_id = UUID((await register(client, tokens))["id"])
    await insert_samples(db, node_id, [T0 + timedelta(minutes=m) for m in range(5)])
    path = f"/v1/nodes/{node_id}/health/history"

    async def times(query: dict[str, str] | str) -> list[str]:
        if isinstance(query, str):
            response = await client.get(path + query, headers=admin(tokens))
        else:
            response = await client.get(path, query_string=query, headers=admin(tokens))
        assert response.status_code == 200, await response.get_json()
        data = (await response.get_json())["data"]
        assert all(s["node_id"] == str(node_id) for s in data)
        return [s["recorded_at"][11:16] for s in data]

    assert await times({}) == [hm(4), hm(3), hm(2), hm(1), hm(0)]
    window = {"from": at(1) + "Z", "to": at(3) + "+00:00"}
    assert await times(window) == [hm(2), hm(1)]
    shifted = (T0 + timedelta(hours=2, minutes=2)).strftime("%Y-%m-%dT%H:%M:%S") + "+02:00"
    assert await times({"from": shifted}) == [hm(4), hm(3), hm(2)]
    assert await times({"limit": "2"}) == [hm(4), hm(3)]
    assert await times({"limit": "0"}) == [hm(4)]
    # An unescaped "+" arrives as a space.
    assert await times(f"?to={at(1)}+00:00") == [hm(0)]


@pytest.mark.parametrize(
    ("query", "field"),
    [
        ({"from": "yesterday"}, "from"),
        ({"to": "2024-13-01T00:00:00Z"}, "to"),
        ({"from": "2024-05-01T12:00:00"}, "from"),
        ({"from": "2024-05-02T00:00:00Z", "to": "2024-05-01T00:00:00Z"}, "from"),
        ({"limit": "ten"}, "limit"),
    ],
)
async def test_bad_history_window_is_422(
    client: Any,
    tokens: Tokens,
    actor_system: ActorSystem,
    query: dict[str, str],
    field: str,
) -> None:
    node_id = (await register(client, tokens))["id"]
    response = await client.get(
        f"/v1/nodes/{node_id}/health/history", query_string=query, headers=admin(tokens)
    )
    assert fields_of(await error_of(response, 422, "validation_failed")) == {field}


async def test_crashes_are_listed_newest_first(
    client: Any, tokens: Tokens, actor_system: ActorSystem, db: Any
) -> None:
    node_id = UUID((await register(client, tokens))["id"])
    path = f"/v1/nodes/{node_id}/crashes"
    assert await _data(client, tokens, path) == []
    ids = [uuid4(), uuid4()]
    for i, crash_id in enumerate(ids):
        await db.execute(
            "INSERT INTO node_crashes (id, node_id, crashed_at, last_known_frame, crash_signal,"
            " error_log, log_file_url, recovery_action) VALUES ($1, $2, $3, $4, 'SIGSEGV',"
            " 'boom', 'https://logs/x', 'ResetAndRestart')",
            crash_id,
            node_id,
            T0 + timedelta(minutes=i),
            10 * i,
        )
    crashes = await _data(client, tokens, path)
    assert [c["id"] for c in crashes] == [str(ids[1]), str(ids[0])]
    newest = crashes[0]
    assert newest["node_id"] == str(node_id)
    assert newest["crashed_at"] == at(1) + "Z"
    assert newest["last_known_frame"] == 10
    assert newest["crash_signal"] == "SIGSEGV"
    assert newest["error_log"] == "boom" and newest["log_file_url"] == "https://logs/x"
    assert newest["recovery_action"] == "ResetAndRestart"
    assert newest["auto_recovered"] is False
    assert newest["render_job_id"] is None and newest["recovered_at"] is None
