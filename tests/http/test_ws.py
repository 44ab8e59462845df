"""The progress WebSocket without sockets (Quart's test client): handshake, close codes,
snapshot on connect, coalescing, the final message and close 1000 (DESIGN §5)."""

from __future__ import annotations

import json
import time
from typing import Any
from uuid import UUID, uuid4

import attrs
import pytest
import trio
import trio.testing
from quart.testing.connections import WebsocketDisconnectError

from flatrender.actors.hub import ProgressHub
from flatrender.domain.job_state import JobState, JobStep
from flatrender.domain.progress import ProgressInputs
from flatrender.http import ws as ws_module
from flatrender.http.auth import authenticate_token, mint_token
from flatrender.http.common import AppState
from flatrender.persistence import ledger
from flatrender.persistence.db import Database
from tests.helpers import Tokens, bearer
from tests.http.test_nodes_admin import beat
from tests.http.test_renders import make_project, render_body, submit


async def a_job(client: Any, db: Database, tokens: Tokens) -> str:
    project = await make_project(db, tokens.user_id)
    await ledger.credit(db, tokens.user_id, 10_000)
    status, job = await submit(client, tokens.user, render_body(project))
    assert status == 201, job
    # Its actor moves it to Preparing at once (no replica yet, and no node to build one).
    with trio.fail_after(10):
        while True:
            polled = await client.get(
                f"/v1/renders/{job['id']}/progress", headers=bearer(tokens.user)
            )
            if (await polled.get_json())["step"] == "Preparing":
                return str(job["id"])
            await trio.sleep(0.05)


async def closed_with(client: Any, path: str, **kw: Any) -> tuple[list[Any], int]:
    """Every message until the server closes, and the close code."""
    messages = []
    with trio.fail_after(10):
        async with client.websocket(path, **kw) as ws:
            try:
                while True:
                    messages.append(json.loads(await ws.receive()))
            except WebsocketDisconnectError as e:
                return messages, int(e.args[0])


async def test_no_token_or_a_bad_one_closes_4401(client: Any, db: Database, tokens: Tokens) -> None:
    path = f"/ws/v1/render/{await a_job(client, db, tokens)}"
    assert await closed_with(client, path) == ([], 4401)
    assert await closed_with(client, path, headers=bearer("not-a-jwt")) == ([], 4401)
    assert await closed_with(client, path, query_string={"access_token": "nope"}) == ([], 4401)
    assert await closed_with(client, path, headers={"Authorization": "Basic x"}) == ([], 4401)


async def test_unknown_job_closes_4404(client: Any, tokens: Tokens) -> None:
    assert await closed_with(client, f"/ws/v1/render/{uuid4()}", headers=bearer(tokens.user)) == (
        [],
        4404,
    )
    assert await closed_with(client, "/ws/v1/render/nope", headers=bearer(tokens.user)) == (
        [],
        4404,
    )


async def test_someone_elses_job_closes_4404_like_an_unknown_one_but_admins_and_services_may_watch(
    client: Any, db: Database, tokens: Tokens
) -> None:
    job_id = await a_job(client, db, tokens)
    path = f"/ws/v1/render/{job_id}"
    assert await closed_with(client, path, headers=bearer(tokens.other_user)) == ([], 4404)
    for token in (tokens.admin, tokens.service):
        async with client.websocket(path, headers=bearer(token)) as ws:
            assert json.loads(await ws.receive())["job_id"] == job_id


async def test_snapshot_on_connect_equals_the_poll_then_the_final_message_and_1000(
    client: Any, db: Database, tokens: Tokens
) -> None:
    job_id = await a_job(client, db, tokens)
    path = f"/ws/v1/render/{job_id}"
    with trio.fail_after(10):
        async with client.websocket(path, query_string={"access_token": tokens.user}) as ws:
            snapshot = json.loads(await ws.receive())
            assert snapshot["job_id"] == job_id and snapshot["total_frames"] == 300
            assert snapshot["step"] == "Preparing"
            polled = await client.get(f"/v1/renders/{job_id}/progress", headers=bearer(tokens.user))
            assert await polled.get_json() == snapshot
            cancel = await client.post(f"/v1/renders/{job_id}/cancel", headers=bearer(tokens.user))
            assert cancel.status_code == 200
            rest = []
            try:
                while True:
                    rest.append(json.loads(await ws.receive()))
            except WebsocketDisconnectError as e:
                assert e.args[0] == 1000
    final = rest[-1]
    assert final["step"] == "Cancelled" and final["eta_seconds"] is None
    assert all(m["step"] != "Cancelled" for m in rest[:-1])
    polled = await client.get(f"/v1/renders/{job_id}/progress", headers=bearer(tokens.user))
    assert await polled.get_json() == final
    # A finished job: its final state at once, then 1000.
    assert await closed_with(client, path, headers=bearer(tokens.user)) == ([final], 1000)


async def test_a_burst_of_changes_reaches_a_watcher_coalesced_latest_last(
    client: Any, db: Database, tokens: Tokens, app_state: AppState
) -> None:
    job_id = await a_job(client, db, tokens)
    assert app_state.actors is not None
    hub = app_state.actors.hub
    async with client.websocket(f"/ws/v1/render/{job_id}", headers=bearer(tokens.user)) as ws:
        await ws.receive()
        await trio.sleep(0.2)  # past the snapshot's flush interval
        state = JobState(job_id=UUID(job_id), start_frame=0, end_frame=299, step=JobStep.RENDERING)
        for n in range(100):  # without a checkpoint in between: one flush
            hub.publish(ProgressInputs(state, 1000 + n, preview_b64=f"p{n}"))
        received = []
        with trio.move_on_after(0.5):
            while True:
                received.append(json.loads(await ws.receive()))
    assert [m["preview_b64"] for m in received] == ["p99"]


@pytest.mark.parametrize("path", ["/ws/v1/render/{job_id}"])
async def test_the_route_is_in_the_served_openapi_document(client: Any, path: str) -> None:
    doc = await (await client.get("/v1/openapi.json")).get_json()
    assert set(doc["x-websockets"][path]["close_codes"]) >= {"1000", "1001", "1008", "1013", "4401"}


async def overflow(hub: ProgressHub, job_id: UUID) -> None:
    """Publish changes, each flushed, to a watcher that reads nothing, until the hub drops it:
    the test client's queue fills, the handler's send blocks, then the subscription's channel
    fills and the hub's ``send_nowait`` finds it full."""
    hub.interval = 0.0  # a flush per change, so filling the channel takes no wall-clock time
    state = JobState(job_id=job_id, start_frame=0, end_frame=299, step=JobStep.RENDERING)
    for n in range(10 * hub.buffer):
        hub.publish(ProgressInputs(state, 1000 + n, preview_b64=f"p{n}"))
        await trio.sleep(0.005)  # the hub's task flushes it
        if hub.statistics().dropped:
            break
    assert hub.statistics().dropped == 1
    assert hub.statistics().subscribers == 0


@pytest.mark.parametrize(
    ("close", "code"),
    [("too_slow", 1013), ("shutdown", 1001)],
)
async def test_the_hub_closing_a_subscriber_closes_its_socket_with_that_code(
    client: Any, db: Database, tokens: Tokens, app_state: AppState, close: str, code: int
) -> None:
    job_id = await a_job(client, db, tokens)
    assert app_state.actors is not None
    hub = app_state.actors.hub
    with trio.fail_after(10):
        async with client.websocket(f"/ws/v1/render/{job_id}", headers=bearer(tokens.user)) as ws:
            await ws.receive()
            if close == "too_slow":
                await overflow(hub, UUID(job_id))
            else:
                hub.close_all()
            with pytest.raises(WebsocketDisconnectError) as closed:
                while True:
                    await ws.receive()
    assert closed.value.args[0] == code


async def test_the_nodes_topic_is_for_admins_with_a_snapshot_then_changes(
    client: Any, tokens: Tokens, app_state: AppState
) -> None:
    assert await closed_with(client, "/ws/v1/nodes") == ([], 4401)
    assert await closed_with(client, "/ws/v1/nodes", headers=bearer(tokens.user)) == ([], 4403)
    body = {
        "name": "ws-node",
        "region": "local",
        "node_ip": "10.0.0.9",
        "worker_port": 9000,
        "current_ae_version": "2024",
    }
    created = await client.post("/v1/nodes", json=body, headers=bearer(tokens.service))
    assert created.status_code == 201, await created.get_json()
    node_id = (await created.get_json())["id"]
    assert app_state.actors is not None
    with trio.fail_after(10):
        async with client.websocket("/ws/v1/nodes", headers=bearer(tokens.admin)) as ws:
            snapshot = json.loads(await ws.receive())
            assert snapshot["type"] == "snapshot"
            assert {"id": node_id, "name": "ws-node", "status": "Offline"} in snapshot["nodes"]
            await beat(app_state.actors, UUID(node_id))  # its first heartbeat: Online
            change = json.loads(await ws.receive())
    assert change["type"] == "changes"
    assert {"id": node_id, "status": "Idle"} in change["nodes"]


async def test_a_client_that_sends_frames_then_leaves_is_let_go(
    client: Any, db: Database, tokens: Tokens, app_state: AppState
) -> None:
    """Unread client frames used to fill Quart-Trio's 10-slot queue: the disconnect behind them
    was never seen, the handler never cancelled and the subscription stayed pinned."""
    job_id = await a_job(client, db, tokens)
    assert app_state.actors is not None
    hub = app_state.actors.hub
    with trio.fail_after(10):
        async with client.websocket(f"/ws/v1/render/{job_id}", headers=bearer(tokens.user)) as ws:
            await ws.receive()
            assert hub.statistics().subscribers == 1
            for n in range(15):  # under the flood limit, over the framework's queue
                await ws.send(f"hello {n}")
        # Leaving the block sends the disconnect and waits for the handler to end.
    assert hub.statistics().subscribers == 0


async def test_a_client_flooding_frames_is_closed_1008(
    client: Any, db: Database, tokens: Tokens, app_state: AppState
) -> None:
    job_id = await a_job(client, db, tokens)
    assert app_state.actors is not None
    hub = app_state.actors.hub
    with trio.fail_after(10):
        async with client.websocket(f"/ws/v1/render/{job_id}", headers=bearer(tokens.user)) as ws:
            await ws.receive()
            for n in range(ws_module.CLIENT_BURST + 5):
                await ws.send(f"spam {n}")
            with pytest.raises(WebsocketDisconnectError) as closed:
                while True:
                    await ws.receive()
    assert closed.value.args[0] == 1008
    assert hub.statistics().subscribers == 0


def test_the_flood_gate_allows_a_burst_then_the_refill_rate() -> None:
    gate = ws_module.FloodGate(burst=3, per_sec=2.0)
    assert [gate.allow(0.0) for _ in range(4)] == [True, True, True, False]
    assert gate.allow(0.5)  # one frame refilled in half a second
    assert not gate.allow(0.5)
    assert [gate.allow(100.0) for _ in range(4)] == [True, True, True, False]  # capped at burst


async def test_an_expired_token_ends_the_stream_with_4401(
    client: Any, db: Database, tokens: Tokens, app_state: AppState
) -> None:
    job_id = await a_job(client, db, tokens)
    short = mint_token(tokens.secret, tokens.user_id, ttl_sec=1)
    with trio.fail_after(10):
        async with client.websocket(f"/ws/v1/render/{job_id}", headers=bearer(short)) as ws:
            assert json.loads(await ws.receive())["job_id"] == job_id
            with pytest.raises(WebsocketDisconnectError) as closed:
                while True:
                    await ws.receive()
    assert closed.value.args[0] == 4401
    assert app_state.actors.hub.statistics().subscribers == 0
    assert app_state.actors is not None
    assert app_state.actors.hub.statistics().subscribers == 0


def test_a_user_principal_keeps_the_tokens_expiry_and_a_service_has_none(
    config: Any, tokens: Tokens
) -> None:
    user = authenticate_token(tokens.user, config.auth)
    assert user.exp is not None and user.exp > time.time()
    assert authenticate_token(tokens.service, config.auth).exp is None


@pytest.mark.parametrize("kind", ["service", "user"])
async def test_a_reload_that_revokes_the_token_ends_the_stream_with_4401(
    client: Any,
    db: Database,
    tokens: Tokens,
    app_state: AppState,
    kind: str,
) -> None:
    job_id = await a_job(client, db, tokens)
    token = tokens.service if kind == "service" else tokens.user
    auth = app_state.config.auth
    with trio.fail_after(10):
        async with client.websocket(f"/ws/v1/render/{job_id}", headers=bearer(token)) as ws:
            assert json.loads(await ws.receive())["job_id"] == job_id
            # A reload that keeps the token (another token added) keeps the stream.
            kept = attrs.evolve(auth, service_tokens=(*auth.service_tokens, "x" * 32))
            app_state.reload(attrs.evolve(app_state.config, auth=kept))
            await trio.testing.wait_all_tasks_blocked()
            assert app_state.actors is not None
            assert app_state.actors.hub.statistics().subscribers == 1
            if kind == "service":
                revoked = attrs.evolve(kept, service_tokens=("x" * 32,))
            else:
                revoked = attrs.evolve(kept, jwt_secret="another-secret-" + "y" * 32)
            app_state.reload(attrs.evolve(app_state.config, auth=revoked))
            with pytest.raises(WebsocketDisconnectError) as closed:
                while True:
                    await ws.receive()
    assert closed.value.args[0] == 4401
    assert app_state.actors.hub.statistics().subscribers == 0
