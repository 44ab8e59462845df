"""A stand-in orchestrator for agent tests, until the daemon's internal endpoints exist.

Minimal on purpose: it checks every node signature with ``flatrender.domain.signing.verify``,
records every call, delivers scripted commands in each heartbeat answer until they are acked,
and answers reports as told (``stale_ranges`` -> 409 ``stale_assignment``, ``crash_action``).
It decides nothing else. Replace its uses with the real daemon once issue 3's endpoints land.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Awaitable, Callable
from functools import partial
from typing import Any
from uuid import UUID, uuid4

import attrs
import hypercorn.config
import hypercorn.trio
import trio
from quart import Response, jsonify, request
from quart_trio import QuartTrio

from flatrender.domain import signing

MASTER_KEY = "stub-master-key"
ADMIN_TOKEN = "stub-admin-token"


@attrs.frozen
class Call:
    path: str
    body: Any
    at: float


@attrs.define
class StubState:
    names: dict[str, UUID] = attrs.field(factory=dict)
    calls: list[Call] = attrs.field(factory=list)
    # node id -> commands (wire dicts) delivered until acked
    pending: dict[UUID, list[dict[str, Any]]] = attrs.field(factory=dict)
    stale_ranges: set[str] = attrs.field(factory=set)
    crash_action: str = "ResetAndRestart"
    next_heartbeat_in_sec: int = 0
    downloads: dict[str, bytes] = attrs.field(factory=dict)
    bad_signatures: int = 0
    # awaited before answering a frame report (e.g. to look at storage at that moment)
    frame_hook: Callable[[dict[str, Any]], Awaitable[None]] | None = None

    def of(self, suffix: str, node_id: UUID | None = None) -> list[Any]:
        """Bodies of the calls whose path ends with ``suffix`` (for ``node_id``), in order."""
        return [
            c.body
            for c in self.calls
            if c.path.endswith(suffix) and (node_id is None or str(node_id) in c.path)
        ]

    def command(self, node_id: UUID, type_: str, **fields: Any) -> str:
        command_id = str(uuid4())
        self.pending.setdefault(node_id, []).append({"id": command_id, "type": type_, **fields})
        return command_id


def _secret(node_id: str) -> str:
    return signing.node_secret(MASTER_KEY, UUID(node_id))


def create_stub(state: StubState) -> QuartTrio:
    app = QuartTrio(__name__)

    async def verified(signer: str) -> Any:
        raw = await request.get_data()
        header = request.headers.get(signing.HEADER, "")
        ok = UUID(signer) in state.names.values() and signing.verify(
            _secret(signer), header, request.method, request.path, raw, time.time(), 300
        )
        if not ok:
            state.bad_signatures += 1
            return None
        body = await request.get_json(force=True)
        state.calls.append(Call(request.path, body, trio.current_time()))
        return body

    def unauthorized() -> tuple[Response, int]:
        return jsonify({"error": {"code": "unauthorized", "message": "bad signature"}}), 401

    @app.post("/v1/nodes")
    async def register() -> Any:
        if request.headers.get("Authorization") != f"Bearer {ADMIN_TOKEN}":
            return jsonify({"error": {"code": "unauthorized", "message": "admin only"}}), 401
        body = await request.get_json()
        if body["name"] in state.names:
            return jsonify({"error": {"code": "conflict", "message": "name taken"}}), 409
        node_id = uuid4()
        state.names[body["name"]] = node_id
        state.calls.append(Call(request.path, body, trio.current_time()))
        return jsonify({**body, "id": str(node_id), "node_secret": _secret(str(node_id))}), 201

    @app.post("/v1/internal/nodes/<node_id>/online")
    @app.post("/v1/internal/nodes/<node_id>/cache-update")
    async def node_call(node_id: str) -> Any:
        if await verified(node_id) is None:
            return unauthorized()
        return "", 204

    @app.post("/v1/internal/nodes/<node_id>/heartbeat")
    async def heartbeat(node_id: str) -> Any:
        body = await verified(node_id)
        if body is None:
            return unauthorized()
        acked = set(body["acked_command_ids"])
        queue = state.pending.get(UUID(node_id), [])
        queue[:] = [c for c in queue if c["id"] not in acked]
        return jsonify(
            {"next_heartbeat_in_sec": state.next_heartbeat_in_sec, "pending_commands": queue}
        )

    @app.post("/v1/internal/render/jobs/<job_id>/frames")
    async def frames(job_id: str) -> Any:
        body = await request.get_json(force=True)
        if await verified(body["node_id"]) is None:
            return unauthorized()
        if state.frame_hook is not None:
            await state.frame_hook(body)
        if body["frame_job_id"] in state.stale_ranges:
            return jsonify({"error": {"code": "stale_assignment", "message": "moved"}}), 409
        return "", 204

    @app.post("/v1/internal/render/jobs/<job_id>/crash")
    async def crash(job_id: str) -> Any:
        body = await request.get_json(force=True)
        if await verified(body["node_id"]) is None:
            return unauthorized()
        return jsonify({"action_recommended": state.crash_action, "reassigned_to_node_id": None})

    @app.post("/v1/internal/render/jobs/<job_id>/replica-ready")
    async def replica_ready(job_id: str) -> Any:
        body = await request.get_json(force=True)
        if await verified(body["node_id"]) is None:
            return unauthorized()
        return "", 204

    @app.get("/downloads/<name>")
    async def download(name: str) -> Any:
        if name not in state.downloads:
            return "", 404
        return state.downloads[name]

    return app


async def serve(nursery: trio.Nursery, app: Any, port: int = 0) -> str:
    """Serve ``app`` on 127.0.0.1 (a free port by default) until ``nursery`` is cancelled."""
    config = hypercorn.config.Config()
    config.bind = [f"127.0.0.1:{port}"]
    config.accesslog = None
    config.graceful_timeout = 0.1
    binds: list[str] = await nursery.start(
        partial(hypercorn.trio.serve, app, config, shutdown_trigger=trio.sleep_forever)
    )
    return binds[0]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def wait_for(predicate: Callable[[], object], limit: float = 5.0) -> None:
    """Poll ``predicate`` (no fixed sleeps in tests); fail after ``limit`` seconds."""
    with trio.fail_after(limit):
        # Polling on purpose: the conditions span the stub, the agent and S3, none of which
        # has an event to wait on.
        while not predicate():  # noqa: ASYNC110
            await trio.sleep(0.01)
