"""WebSocket ``/ws/v1/render/{job_id}``: live RenderProgress of one job (DESIGN §5, fixed).

The connection is accepted before anything waits (a handshake left hanging is worse than a
close code), then: 4401 without a valid token (``Authorization: Bearer`` or ``?access_token=``),
4404 for no such job and for someone else's (ids do not leak; admins and service tokens watch
any job). A reload that makes the token invalid (a service token removed, the JWT secret,
audience or issuer changed) ends the stream with 4401.
Then one RenderProgress snapshot, one message per change (the ProgressHub coalesces them to 10
a second), and after the final message in a terminal step, close 1000. The hub closes a
subscriber 1013 when it reads too slowly and 1001 when the daemon drains. Keep-alive pings are
Hypercorn's (``websocket_ping_interval``, set by the daemon).

``/ws/v1/nodes`` (admins and services; 4403 for a user) is the hub's admin topic: every node's
status, then batches of status changes, for tooling that follows the fleet.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from uuid import UUID

import trio
from quart import Blueprint, websocket

from flatrender.actors.hub import CloseReason, ProgressHub, Subscription
from flatrender.http.auth import Principal, authenticate_token, bearer_token
from flatrender.http.common import state
from flatrender.http.errors import ApiError
from flatrender.http.progress import hub
from flatrender.persistence import nodes
from flatrender.persistence import progress as stored

log = logging.getLogger("flatrender.ws")

bp = Blueprint("ws", __name__)

UNAUTHORIZED = 4401
FORBIDDEN = 4403
NOT_FOUND = 4404
RETRY_LATER = 1013
POLICY_VIOLATION = 1008

# Frames a client may send (they are discarded): a burst of this many, refilled this fast.
CLIENT_BURST = 20
CLIENT_FRAMES_PER_SEC = 5.0

REASONS = {
    CloseReason.FINISHED: "the job is finished",
    CloseReason.GOING_AWAY: "the orchestrator is shutting down, reconnect",
    CloseReason.TOO_SLOW: "too slow to keep up, reconnect",
}


# A client that has not taken a message in this long is gone or stuck: stop writing to it.
SEND_TIMEOUT_SEC = 30.0


class FloodGate:
    """A token bucket over the client's frames: ``allow`` is False once it sends too many."""

    def __init__(self, burst: int = CLIENT_BURST, per_sec: float = CLIENT_FRAMES_PER_SEC) -> None:
        self.burst, self.per_sec = burst, per_sec
        self._tokens = float(burst)
        self._at: float | None = None

    def allow(self, now: float) -> bool:
        if self._at is not None:
            self._tokens = min(self.burst, self._tokens + (now - self._at) * self.per_sec)
        self._at = now
        if self._tokens < 1.0:
            return False
        self._tokens -= 1.0
        return True


Stream = Callable[[Principal], Awaitable[tuple[int, str]]]


async def _serve(stream: Stream) -> None:
    """Accept, authenticate, then run ``stream`` while reading the client's frames; close."""
    await websocket.accept()
    try:
        token = _token()
        principal = authenticate_token(token, state().config.auth)
    except ApiError as e:
        code, reason = UNAUTHORIZED, e.message
    else:
        code, reason = await _while_listening(stream, token, principal)
    # Bounded too: a stuck peer would hold the close frame (and this task) forever.
    with trio.move_on_after(SEND_TIMEOUT_SEC):
        await websocket.close(code, reason)


async def _while_listening(stream: Stream, token: str, principal: Principal) -> tuple[int, str]:
    """``stream``'s close code, unless the client floods us or the token expires or is
    revoked by a reload first.

    When the client goes away, Quart-Trio cancels this handler: the reader keeps the frames
    (and so the disconnect event) flowing for that to happen.
    """
    outcome: tuple[int, str] = (1011, "internal error")
    async with trio.open_nursery() as nursery:

        async def run_stream() -> None:
            nonlocal outcome
            outcome = await stream(principal)
            nursery.cancel_scope.cancel()

        async def read_client() -> None:
            nonlocal outcome
            gate = FloodGate()
            while True:
                await websocket.receive()  # discarded: the protocol has no client messages
                if not gate.allow(trio.current_time()):
                    outcome = POLICY_VIOLATION, "too many messages from the client"
                    nursery.cancel_scope.cancel()
                    return

        async def expire() -> None:
            nonlocal outcome
            assert principal.exp is not None
            await trio.sleep(max(principal.exp - time.time(), 0.0))
            outcome = UNAUTHORIZED, "the token has expired"
            nursery.cancel_scope.cancel()

        async def revoke() -> None:
            nonlocal outcome
            app_state = state()
            while True:
                config = await app_state.reloaded()
                try:
                    authenticate_token(token, config.auth)
                except ApiError:
                    outcome = UNAUTHORIZED, "the token is no longer accepted"
                    nursery.cancel_scope.cancel()
                    return

        nursery.start_soon(run_stream)
        nursery.start_soon(read_client)
        nursery.start_soon(revoke)
        if principal.exp is not None:
            nursery.start_soon(expire)
    return outcome


@bp.websocket("/ws/v1/render/<job_id>")
async def watch_render(job_id: str) -> None:
    await _serve(lambda principal: _watch(job_id, principal))


async def _watch(job_text: str, principal: Principal) -> tuple[int, str]:
    try:
        job_id = UUID(job_text)
    except ValueError:
        return NOT_FOUND, "no such render job"
    owner = await stored.owner(state().db, job_id)
    if owner is None:
        return NOT_FOUND, "no such render job"
    if not principal.can_see(owner):
        return NOT_FOUND, "no such render job"  # as for an unknown id: ids do not leak
    live = hub()
    # A live job's snapshot is the hub's: a connect then costs one query, not a state load.
    subscription = None if live is None else live.subscribe(job_id)
    if subscription is None:
        loaded = await stored.load(state().db, job_id)
        if loaded is None:
            return NOT_FOUND, "no such render job"
        now = trio.current_time()
        if live is None or loaded.seed is None:
            # A finished job (or no actors: a read-only app): one message, then close.
            progress = loaded.progress(now)
            await websocket.send(progress.encode())
            if progress.terminal:
                return CloseReason.FINISHED.value, REASONS[CloseReason.FINISHED]
            return RETRY_LATER, "live progress is not available yet"
        subscription = live.subscribe(job_id, loaded.seed, loaded.rate(now))
    assert live is not None and subscription is not None  # a seeded subscribe subscribes
    return await _forward(live, subscription)


@bp.websocket("/ws/v1/nodes")
async def watch_nodes() -> None:
    """Admin topic: every node's status, then batches of changes (at most 10 a second)."""
    await _serve(_watch_nodes)


async def _watch_nodes(principal: Principal) -> tuple[int, str]:
    if not principal.is_admin:
        return FORBIDDEN, "node status is for administrators"
    live = hub()
    if live is None:
        return RETRY_LATER, "live node status is not available yet"
    rows = await nodes.list_nodes(state().db, None, None)
    snapshot = [{"id": str(r.id), "name": r.name, "status": r.status.value} for r in rows]
    return await _forward(live, live.subscribe_nodes(snapshot))


async def _forward(live: ProgressHub, subscription: Subscription) -> tuple[int, str]:
    try:
        async for text in subscription.messages:
            if subscription.reason in (CloseReason.TOO_SLOW, CloseReason.GOING_AWAY):
                break  # what is still buffered is stale, or nobody will wait for it
            with trio.move_on_after(SEND_TIMEOUT_SEC) as stuck:
                await websocket.send(text)
            if stuck.cancelled_caught:
                return RETRY_LATER, REASONS[CloseReason.TOO_SLOW]
    finally:
        live.unsubscribe(subscription)
    reason = subscription.reason
    if reason is None:  # cannot happen: only the hub ends a subscription
        log.error("topic %s: a subscription ended without a reason", subscription.job_id)
        return 1011, "internal error"
    return reason.value, REASONS[reason]


def _token() -> str:
    """The caller's token from the ``Authorization`` header, else the ``access_token`` query
    parameter; 401 when neither holds one."""
    header = websocket.headers.get("Authorization")
    if header:
        return bearer_token(header)
    return websocket.args.get("access_token", "") or bearer_token(None)
