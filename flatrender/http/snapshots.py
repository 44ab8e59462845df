"""Snapshots (issue 5): one frame of a scene, answered from cache or rendered by a node.

``POST /v1/snapshots`` reads the project, the scene and the live snapshot of the key in one
indexed query (:func:`flatrender.persistence.snapshots.lookup`). A fresh cached image is answered
at once (202 ``Cached`` with presigned urls) without touching the job system, and a render under
way for the key is answered as it stands (202 ``Pending``/``Rendering``). Otherwise one
transaction, under the account's lock, inserts the snapshot (``ON CONFLICT DO NOTHING`` on the
live-key index: a concurrent identical request shares the winner's row), its render job (same
id; kind and price type ``Snapshot``, one frame, PNG) and any charge; the job's actor is started
after the commit and the answer is 202 ``Pending``/``Rendering``.

At most ``[snapshots] max_live_per_user`` snapshot jobs of one user are live (not ended) at
once: a request that would create one more is 429 ``too_many_snapshots`` with ``Retry-After``
and writes nothing. The count runs in the creating transaction under the account's lock, which
every creation of that user takes, so concurrent requests cannot pass the cap together. Cached
answers and requests that share a render under way create no job and are never refused. The
cap is per user whatever the caller (services cannot request snapshots: they have no user).

The presigned urls live ``[s3] presign_ttl_sec`` (never past the snapshot); ``expires_at`` is
the snapshot's own expiry: ask again (GET) for fresh urls until then. After it, GET answers 404
``snapshot_expired`` (the contract's statuses have no "expired"; the Reaper removes the row
soon after, and then it is plain ``not_found``). Someone else's project or snapshot is 404.
"""

from __future__ import annotations

import contextlib
from datetime import datetime
from typing import Any
from uuid import UUID, uuid4

import attrs
from quart import Blueprint, Response

from flatrender.actors import snapshot_objects
from flatrender.actors.mailbox import ActorUnavailable
from flatrender.clock import utc_now
from flatrender.domain import snapshots as snap
from flatrender.domain.bounds import INT4, Int4
from flatrender.http.auth import acting_user, require_owner
from flatrender.http.codec import dump
from flatrender.http.common import body, caller, path_uuid, state
from flatrender.http.errors import (
    ApiError,
    error_response,
    insufficient_balance,
    not_found,
    unprocessable,
)
from flatrender.persistence import jobs, ledger
from flatrender.persistence import snapshots as snapshot_db
from flatrender.persistence.snapshots import SnapshotRow

bp = Blueprint("snapshots", __name__)

# A snapshot renders in seconds: by then one of the user's live snapshots has likely ended.
RETRY_AFTER_SEC = 5


class TooManySnapshots(Exception):
    """The user already has ``limit`` live snapshot jobs (429, nothing written)."""

    def __init__(self, limit: int) -> None:
        super().__init__(f"at most {limit} snapshots may render at once")
        self.limit = limit


@attrs.frozen
class SnapshotIn:
    saved_project_id: UUID
    scene_key: str
    frame_number: Int4


def _input_errors(spec: SnapshotIn) -> list[dict[str, str]]:
    errors = []
    # Int4: the codec refused anything above the column; a frame is never negative.
    if spec.frame_number < 0:
        errors.append({"field": "$.frame_number", "message": f"must be within 0..{INT4.high}"})
    if not spec.scene_key:
        errors.append({"field": "$.scene_key", "message": "must be a non-empty string"})
    return errors


@bp.post("/v1/snapshots")
async def request_snapshot() -> tuple[dict[str, Any], int, dict[str, str]] | Response:
    try:
        return await _request_snapshot()
    except TooManySnapshots as e:
        response = error_response(
            429,
            "too_many_snapshots",
            f"{e}; retry when one has finished",
            {"max_live_per_user": e.limit, "retry_after_sec": RETRY_AFTER_SEC},
        )
        response.headers["Retry-After"] = str(RETRY_AFTER_SEC)
        return response


async def _request_snapshot() -> tuple[dict[str, Any], int, dict[str, str]]:
    user_id = acting_user(caller())
    spec = await body(SnapshotIn)
    errors = _input_errors(spec)
    if errors:
        raise unprocessable("the snapshot request is invalid", errors)
    app = state()
    found = await snapshot_db.lookup(
        app.db, spec.saved_project_id, spec.scene_key, spec.frame_number
    )
    if found is None or found.owner_user_id != user_id:
        raise not_found("project", spec.saved_project_id)
    errors = snap.frame_errors(found.scene, spec.scene_key, spec.frame_number)
    if errors:
        raise unprocessable("the frame is not in the scene", errors)
    now = utc_now()
    live = found.live
    status = None if live is None else snap.SnapshotStatus(live.status)
    match snap.verdict(status, None if live is None else live.expires_at, now):
        case snap.Verdict.HIT | snap.Verdict.SHARE if live is not None:
            return await _accepted(live, now)
        case snap.Verdict.EXPIRED if live is not None:
            await _remove_expired(live, now)  # the Reaper has not come by yet: free the key
        case _:
            pass
    row, created = await _create(user_id, spec, found, now)
    if created:
        actors = app.actors
        if actors is not None:
            with contextlib.suppress(ActorUnavailable):  # committed: a restart starts it anyway
                await actors.jobs.start_job(row.id)
    return await _accepted(row, now)


async def _accepted(row: SnapshotRow, now: datetime) -> tuple[dict[str, Any], int, dict[str, str]]:
    urls = await _urls(row, now)
    answer = {
        "snapshot_id": str(row.id),
        "status": row.status,
        "image_url": urls[0],
        "thumbnail_url": urls[1],
        "expires_at": dump(row.expires_at),
    }
    return answer, 202, {"Location": f"/v1/snapshots/{row.id}"}


async def _urls(row: SnapshotRow, now: datetime) -> tuple[str | None, str | None]:
    """Presigned GET urls of a fresh cached snapshot (local computation, no I/O)."""
    status = snap.SnapshotStatus(row.status)
    if not snap.is_fresh(status, row.expires_at, now) or not row.image_key:
        return None, None
    objects = state().store
    ttl = snap.url_ttl_sec(state().config.s3.presign_ttl_sec, row.expires_at, now)
    image = await objects.presign_get(row.image_key, ttl)
    thumbnail = await objects.presign_get(row.thumbnail_key, ttl) if row.thumbnail_key else None
    return image, thumbnail


async def _remove_expired(row: SnapshotRow, now: datetime) -> None:
    """Objects first, then the row (DESIGN §7), as the Reaper would."""
    await snapshot_objects.remove_all(state().store, row)
    await snapshot_db.delete_expired(state().db, [row.id], now)


async def _create(
    user_id: UUID, spec: SnapshotIn, found: snapshot_db.Lookup, now: datetime
) -> tuple[SnapshotRow, bool]:
    """The snapshot and its job, or the live snapshot that won the key; 402 when a priced
    snapshot is not covered by the balance, :class:`TooManySnapshots` when the user has
    ``max_live_per_user`` live already (nothing is written then)."""
    app = state()
    quote = snap.quote_frame(found.frame_rate, app.config.pricing)
    new = snapshot_db.NewSnapshot(
        id=uuid4(),
        user_id=user_id,
        saved_project_id=spec.saved_project_id,
        project_version=found.version,
        scene_key=spec.scene_key,
        frame_number=spec.frame_number,
        requested_at=now,
        expires_at=snap.expires_at(now, app.config.snapshots.expiry_hours),
    )
    async with app.db.transaction() as conn:
        balance = await ledger.lock_account(conn, user_id)
        row, created = await snapshot_db.insert(conn, new)
        if not created:
            return row, False
        limit = app.config.snapshots.max_live_per_user
        if await snapshot_db.live_jobs(conn, user_id) >= limit:
            raise TooManySnapshots(limit)
        price = quote.total_minor
        if balance < price:
            raise insufficient_balance("this snapshot", balance, price)
        job = await jobs.insert_job(conn, _job(new, found, price))
        if price > 0:
            await ledger.append(conn, user_id, "charge", -price, job_id=job.id, note="snapshot")
        await snapshot_db.set_job(conn, row.id, job.id)
        meta = {"price_minor": price, "pricing": quote.breakdown, "snapshot_id": str(row.id)}
        message = f"snapshot of frame {new.frame_number} of scene {new.scene_key!r}"
        await jobs.log(conn, job.id, "info", f"{message} (price {price} minor units)", meta=meta)
    return attrs.evolve(row, job_id=job.id), True


def _job(new: snapshot_db.NewSnapshot, found: snapshot_db.Lookup, price: int) -> jobs.NewJob:
    return jobs.NewJob(
        id=new.id,  # the snapshot's id: the node uploads under the snapshot's prefix
        user_id=new.user_id,
        saved_project_id=new.saved_project_id,
        project_version=new.project_version,
        name=found.name,
        priority_queue=snap.PRICE_TYPE,
        price_type=snap.PRICE_TYPE,
        paid_price_minor=price,
        quality=snap.QUALITY,
        resolution=snap.RESOLUTION,
        frame_rate=found.frame_rate,
        duration_sec=1 / found.frame_rate,
        has_voiceover=False,
        end_frame=new.frame_number,
        discount_code=None,
        support_flatrender=False,
        tell_me_when_done=False,
        preferred_region=None,
        kind="Snapshot",
        output_format=snap.OUTPUT_FORMAT,
        start_frame=new.frame_number,
    )


@bp.get("/v1/snapshots/<snapshot_id>")
async def get_snapshot(snapshot_id: str) -> dict[str, Any]:
    principal = caller()
    sid = path_uuid("snapshot_id", snapshot_id)
    found = await snapshot_db.get(state().db, sid)
    if found is None:
        raise not_found("snapshot", sid)
    row, project_owner = found
    require_owner(principal, project_owner, "snapshot", sid)
    now = utc_now()
    if snap.is_expired(snap.SnapshotStatus(row.status), row.expires_at, now):
        raise ApiError(
            404,
            "snapshot_expired",
            "the snapshot has expired; request the frame again",
            {"id": str(sid), "expires_at": dump(row.expires_at)},
        )
    image, thumbnail = await _urls(row, now)
    return {
        "id": str(row.id),
        "saved_project_id": str(row.saved_project_id),
        "scene_key": row.scene_key,
        "frame_number": row.frame_number,
        "status": row.status,
        "image_url": image,
        "thumbnail_url": thumbnail,
        "width": row.width,
        "height": row.height,
        "duration_ms": row.duration_ms,
        "expires_at": dump(row.expires_at),
        "requested_at": dump(row.requested_at),
        "completed_at": dump(row.completed_at),
    }
