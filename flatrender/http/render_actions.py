"""Render job actions that go through the job's actor: cancel, retry, progress."""

from __future__ import annotations

import contextlib
from typing import Any
from uuid import UUID, uuid4

import asyncpg
import attrs
from quart import Blueprint, request

from flatrender.actors import job
from flatrender.actors.jobs import JobSystem, JobUnknown
from flatrender.actors.mailbox import ActorUnavailable
from flatrender.domain import pricing
from flatrender.http.codec import parse_json, structure
from flatrender.http.common import caller, path_uuid, state
from flatrender.http.errors import ApiError, conflict, not_found
from flatrender.http.progress import current_progress
from flatrender.http.renders import charge_and_insert, job_json, submitter, visible_job
from flatrender.persistence import jobs

bp = Blueprint("render_actions", __name__)


@attrs.frozen
class CancelIn:
    reason: str = "cancelled by the user"


REFUNDED = """
SELECT COALESCE(sum(amount_minor), 0) FROM ledger_entries WHERE job_id = $1 AND kind = 'refund'
"""


def job_system() -> JobSystem:
    actors = state().actors
    if actors is None:
        raise ApiError(503, "service_unavailable", "the job system is starting, retry")
    return actors.jobs


async def start(job_id: UUID) -> None:
    """Hand a just-committed job to its actor (a restart would pick it up all the same)."""
    actors = state().actors
    if actors is not None:
        with contextlib.suppress(ActorUnavailable):
            await actors.jobs.start_job(job_id)


async def cancellable_job(job_id: str) -> jobs.JobRow:
    """The render job as :func:`visible_job` finds it; an admin or a service may also cancel a
    snapshot's job (one stuck without a node), which stays 404 to its user like every other
    ``/v1/renders`` path."""
    principal = caller()
    if not principal.is_admin:
        return await visible_job(job_id)
    jid = path_uuid("job_id", job_id)
    row = await jobs.get_job(state().db, jid)
    if row is None:
        raise not_found("render job", jid)
    return row


@bp.post("/v1/renders/<job_id>/cancel")
async def cancel_render(job_id: str) -> dict[str, Any]:
    """Idempotent: a second cancel answers the same refund and moves no money."""
    row = await cancellable_job(job_id)
    raw = await request.get_data(as_text=False)
    assert isinstance(raw, bytes)
    reason = structure(parse_json(raw), CancelIn).reason if raw.strip() else CancelIn().reason
    if not row.terminal:
        try:
            refund = await job_system().call(row.id, lambda r: job.Cancel(reason[:500], r))
            return {"cancelled": True, "refund_amount_minor": refund}
        except (JobUnknown, ActorUnavailable):
            pass  # it may just have ended (the cancel waited in its inbox): look again
        row = await cancellable_job(job_id)
        if not row.terminal:
            raise ApiError(503, "service_unavailable", "the job is busy, retry")
    if row.step == "Cancelled":
        refunded = int(await state().db.fetchval(REFUNDED, row.id))
        return {"cancelled": True, "refund_amount_minor": refunded}
    raise conflict("job_finished", f"the job is already {row.step}", step=row.step)


RETRIED_BY = "SELECT id FROM render_jobs WHERE retry_of_job_id = $1 LIMIT 1"


@bp.post("/v1/renders/<job_id>/retry")
async def retry_render(job_id: str) -> tuple[dict[str, Any], int, dict[str, str]]:
    """A Failed job (refunded in full) runs again as a new job, charged like any submit: at the
    same price type, which its user must still be entitled to (403 ``price_type_not_allowed``)."""
    old = await visible_job(job_id)
    if old.step != "Failed":
        raise conflict("not_failed", f"only a Failed job can be retried; this one is {old.step}")
    # A second retry (a double click) would charge a second render of the same failure.
    retried = await state().db.fetchval(RETRIED_BY, old.id)
    if retried is not None:
        raise conflict("already_retried", "this job was already retried", retry_job_id=str(retried))
    quote = pricing.quote(
        quality=old.quality,
        resolution=old.resolution,
        duration_sec=old.duration_sec,
        frame_rate=old.frame_rate,
        price_type=old.price_type,
        support_flatrender=old.support_flatrender,
        discount_percent=0.0,  # a discount code is redeemed once, by the first job
        cfg=state().config.pricing,
    )
    new = jobs.NewJob(
        id=uuid4(),
        user_id=old.user_id,
        saved_project_id=old.saved_project_id,
        project_version=old.project_version,
        name=old.name,
        priority_queue=old.priority_queue,
        price_type=old.price_type,
        paid_price_minor=quote.total_minor,
        quality=old.quality,
        resolution=old.resolution,
        frame_rate=old.frame_rate,
        duration_sec=old.duration_sec,
        has_voiceover=old.has_voiceover,
        end_frame=old.end_frame,
        discount_code=None,
        support_flatrender=old.support_flatrender,
        tell_me_when_done=old.tell_me_when_done,
        preferred_region=old.preferred_region,
        retry_of_job_id=old.id,
        retry_count=old.retry_count + 1,
    )
    try:
        row = await charge_and_insert(new, quote, submitter(caller()))
    except asyncpg.UniqueViolationError:
        # Lost a race with a simultaneous retry of the same job; nothing was written.
        retried = await state().db.fetchval(RETRIED_BY, old.id)
        raise conflict(
            "already_retried", "this job was already retried", retry_job_id=str(retried)
        ) from None
    await start(row.id)
    return job_json(row), 201, {"Location": f"/v1/renders/{row.id}"}


@bp.get("/v1/renders/<job_id>/progress")
async def render_progress(job_id: str) -> dict[str, Any]:
    """Exactly what the WebSocket would send now (one builder for both)."""
    row = await visible_job(job_id)
    progress = await current_progress(row.id)
    if progress is None:
        raise not_found("render job", row.id)
    return progress.to_json()
