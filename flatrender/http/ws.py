"""WebSocket ``/ws/v1/render/{job_id}``: live RenderProgress of one job (DESIGN §5, fixed).

The connection is accepted before anything waits (a handshake left hanging is worse than a
close code), then: 4401 without a valid token (``Authorization: Bearer`` or ``?access_token=``),
4404 for no such job, 4403 for someone else's job (admins and service tokens watch any job).
Then one RenderProgress snapshot, one message per change (the ProgressHub coalesces them to 10
a second), and after the final message in a terminal step, close 1000. The hub closes a
subscriber 1013 when it reads too slowly and 1001 when the daemon drains. Keep-alive pings are
Hypercorn's (``websocket_ping_interval``, set by the daemon).

``/ws/v1/nodes`` (admins and services; 4403 for a user) is the hub's admin topic: every node's
status, then batches of status changes, for tooling that follows the fleet.
"""

from __future__ import annotations

import logging
from uuid import UUID

import trio
from quart import Blueprint, websocket

from flatrender.actors.hub import CloseReason, ProgressHub, Subscription
from flatrender.domain.progress import build, frames_reported, seeded_rate
from flatrender.http.auth import Principal, authenticate, authenticate_token
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

REASONS = {
    CloseReason.FINISHED: "the job is finished",
    CloseReason.GOING_AWAY: "the orchestrator is shutting down, reconnect",
    CloseReason.TOO_SLOW: "too slow to keep up, reconnect",
}


# A client that has not taken a message in this long is gone or stuck: stop writing to it.
SEND_TIMEOUT_SEC = 30.0


@bp.websocket("/ws/v1/render/<job_id>")
async def watch_render(job_id: str) -> None:
    await websocket.accept()
    code, reason = await _watch(job_id)
    # Bounded too: a stuck peer would hold the close frame (and this task) forever.
    with trio.move_on_after(SEND_TIMEOUT_SEC):
        await websocket.close(code, reason)


async def _watch(job_text: str) -> tuple[int, str]:
    try:
        principal = _principal()
    except ApiError as e:
        return UNAUTHORIZED, e.message
    try:
        job_id = UUID(job_text)
    except ValueError:
        return NOT_FOUND, "no such render job"
    owner = await stored.owner(state().db, job_id)
    if owner is None:
        return NOT_FOUND, "no such render job"
    if not principal.can_see(owner):
        return FORBIDDEN, "this render job belongs to another user"
    live = hub()
    # A live job's snapshot is the hub's: a connect then costs one query, not a state load.
    subscription = None if live is None else live.subscribe(job_id)
    if subscription is None:
        loaded = await stored.load(state().db, job_id)
        if loaded is None:
            return NOT_FOUND, "no such render job"
        _, inputs, recent = loaded
        now = trio.current_time()
        rate = seeded_rate(now, frames_reported(inputs.state), recent)
        if live is None:  # no actors (a read-only app): one snapshot, and come back later
            progress = build(inputs, rate.per_sec(now))
            await websocket.send(progress.encode())
            if progress.terminal:
                return CloseReason.FINISHED.value, REASONS[CloseReason.FINISHED]
            return RETRY_LATER, "live progress is not available yet"
        subscription = live.subscribe(job_id, inputs, rate)
    assert live is not None and subscription is not None  # a seeded subscribe subscribes
    return await _forward(live, subscription)


@bp.websocket("/ws/v1/nodes")
async def watch_nodes() -> None:
    """Admin topic: every node's status, then batches of changes (at most 10 a second)."""
    await websocket.accept()
    code, reason = await _watch_nodes()
    with trio.move_on_after(SEND_TIMEOUT_SEC):
        await websocket.close(code, reason)


async def _watch_nodes() -> tuple[int, str]:
    try:
        principal = _principal()
    except ApiError as e:
        return UNAUTHORIZED, e.message
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


def _principal() -> Principal:
    """The caller by ``Authorization`` header, else by ``access_token`` query parameter."""
    auth = state().config.auth
    header = websocket.headers.get("Authorization")
    if header:
        return authenticate(header, auth)
    token = websocket.args.get("access_token", "")
    if not token:
        return authenticate(None, auth)  # raises the usual 401 message
    return authenticate_token(token, auth)
