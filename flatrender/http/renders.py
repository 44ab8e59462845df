"""Render jobs for their owners (issue 4): submit (priced and charged), list, detail, logs.

A submit is one transaction under the account's row lock: the balance check, the job row, its
charge, the discount redemption and the first log line commit together or not at all, so two
submits racing for the last money cannot both pass (DESIGN §2.4). Someone else's project or job
is 404, never 403: ids do not leak. Lists show the caller's own jobs, admins included (an admin
reads anyone's job by id); a service token has no user, so it cannot list. ``scope=all`` lists
everyone's jobs for admins and services (``flatrender status``), 403 for a user.

The price type is checked under the same account lock (``domain.entitlements``): a user (JWT,
admins too) submits ``Cash`` or a price type its account holds, else 403
``price_type_not_allowed`` and nothing is written; a change of entitlements racing a submit is
ordered before or after it by that lock. A service submits any render price type for the
project's owner (the job and its charge are the owner's). ``Snapshot`` is 403 here for everyone:
snapshot jobs come only from ``/v1/snapshots``.
"""

from __future__ import annotations

import contextlib
import enum
from typing import Any
from uuid import UUID, uuid4

import attrs
from quart import Blueprint, request

from flatrender.actors.mailbox import ActorUnavailable
from flatrender.domain import pricing, submit
from flatrender.domain.bounds import Int4
from flatrender.domain.catalog import Project
from flatrender.domain.entitlements import Submitter, may_submit
from flatrender.http.auth import Principal, Role, acting_user, require_admin, require_owner
from flatrender.http.codec import dump, pick
from flatrender.http.common import body, caller, page_from_query, path_uuid, state
from flatrender.http.errors import (
    ApiError,
    conflict,
    insufficient_balance,
    not_found,
    unprocessable,
)
from flatrender.persistence import catalog, jobs, ledger
from flatrender.persistence.db import Connection

bp = Blueprint("renders", __name__)


class Quality(enum.Enum):
    LOW = "Low"
    MEDIUM = "Medium"
    HIGH = "High"
    FULL = "Full"
    LOSSLESS = "Lossless"


class Resolution(enum.Enum):
    HD = "HD"
    FULL_HD = "FullHD"
    TWO_K = "TwoK"
    FOUR_K = "FourK"


class PriceType(enum.Enum):
    """The contract's list; ``Snapshot`` parses but a render submit refuses it."""

    FREE = "Free"
    PREVIEW = "Preview"
    CASH = "Cash"
    PLAN = "Plan"
    SNAPSHOT = "Snapshot"
    RESELLER = "Reseller"


@attrs.frozen
class RenderJobIn:
    """``RenderJobCreate``."""

    saved_project_id: UUID
    quality: Quality
    resolution: Resolution
    frame_rate: Int4 | None = None
    is_60_fps: bool | None = None
    price_type: PriceType = PriceType.CASH
    discount_code: str | None = None
    support_flatrender: bool = False
    tell_me_when_done: bool = False
    preferred_region: str | None = None

    def options(self) -> submit.RenderOptions:
        return submit.RenderOptions(
            frame_rate=self.frame_rate,
            is_60_fps=self.is_60_fps,
            price_type=self.price_type.value,
            discount_code=submit.given(self.discount_code),
            preferred_region=submit.given(self.preferred_region),
        )


RENDER_JOB = (
    "id", "saved_project_id", "name", "step", "render_progress", "priority_queue", "price_type",
    "paid_price_minor", "quality", "resolution", "frame_rate", "duration_sec", "has_voiceover",
    "image_preview_b64", "failed_message", "export_id", "queued_at", "started_at", "completed_at",
)  # fmt: skip
FRAME_JOB = (
    "id", "node_id", "start_frame", "end_frame", "order_value", "status", "frames_rendered",
    "frames_validated", "attempt", "last_error",
)  # fmt: skip
EXPORT = """
SELECT id, saved_project_id, path, image, size_bytes, duration_sec, width, height, file_extension,
       file_type, render_quality, create_type, produce_date, auto_delete_date
FROM exports WHERE id = $1
"""


# ------------------------------------------------------------------ serialisation


def job_json(row: jobs.JobRow) -> dict[str, Any]:
    data = dump(row)
    return {key: data[key] for key in RENDER_JOB}


def frame_job_json(row: jobs.FrameJobRow) -> dict[str, Any]:
    # A range no node holds yet has no node_id, which the contract does not let be null.
    return pick(dump(row), FRAME_JOB, absent_when_none={"node_id"})


def _plain(record: Any) -> dict[str, Any]:
    """A database record as JSON-ready data (uuids and timestamps as strings)."""
    return {key: dump(value) for key, value in dict(record).items()}


# ------------------------------------------------------------------ submit


@bp.post("/v1/renders")
async def submit_render() -> tuple[dict[str, Any], int, dict[str, str]]:
    principal = caller()
    by_service = principal.role is Role.SERVICE
    user_id = None if by_service else acting_user(principal)
    spec = await body(RenderJobIn)
    options = spec.options()
    errors = submit.option_errors(options)
    if errors:
        raise unprocessable("the render job is invalid", errors)
    project = await catalog.get(state().db, spec.saved_project_id)
    if project is None or (user_id is not None and project.owner_user_id != user_id):
        raise not_found("project", spec.saved_project_id)
    new, quote = _new_job(project.owner_user_id, spec, options, project)
    row = await charge_and_insert(new, quote, submitter(principal))
    actors = state().actors
    if actors is not None:
        with contextlib.suppress(ActorUnavailable):  # committed: a restart starts it anyway
            await actors.jobs.start_job(row.id)
    return job_json(row), 201, {"Location": f"/v1/renders/{row.id}"}


def _new_job(
    user_id: UUID, spec: RenderJobIn, options: submit.RenderOptions, project: Project
) -> tuple[jobs.NewJob, pricing.PriceQuote]:
    """Price the job and fix everything its row holds; raises 422 for an unknown code."""
    cfg = state().config.pricing
    discount_percent = 0.0
    if options.discount_code is not None:
        found = pricing.discount_percent_for(options.discount_code, cfg)
        if found is None:
            raise ApiError(
                422,
                "unknown_discount_code",
                "the discount code is not known",
                {"errors": [{"field": "$.discount_code", "message": "unknown code"}]},
            )
        discount_percent = found
    frame_rate = submit.chosen_frame_rate(options, project.frame_rate)
    plan = submit.frame_plan(
        frame_rate,
        project_frame_rate=project.frame_rate,
        project_total_frames=project.total_frames,
        duration_sec=project.duration_sec,
    )
    quote = pricing.quote(
        quality=spec.quality.value,
        resolution=spec.resolution.value,
        duration_sec=project.duration_sec,
        frame_rate=frame_rate,
        price_type=options.price_type,
        support_flatrender=spec.support_flatrender,
        discount_percent=discount_percent,
        cfg=cfg,
    )
    new = jobs.NewJob(
        id=uuid4(),
        user_id=user_id,
        saved_project_id=project.saved_project_id,
        project_version=project.version,
        name=project.name,
        priority_queue=pricing.priority_queue(options.price_type),
        price_type=options.price_type,
        paid_price_minor=quote.total_minor,
        quality=spec.quality.value,
        resolution=spec.resolution.value,
        frame_rate=plan.frame_rate,
        duration_sec=plan.duration_sec,
        has_voiceover=project.has_voiceover,
        end_frame=plan.end_frame,
        discount_code=options.discount_code,
        support_flatrender=spec.support_flatrender,
        tell_me_when_done=spec.tell_me_when_done,
        preferred_region=options.preferred_region,
    )
    return new, quote


def submitter(principal: Principal) -> Submitter:
    return Submitter.SERVICE if principal.role is Role.SERVICE else Submitter.USER


def price_type_not_allowed(price_type: str) -> ApiError:
    if price_type == "Snapshot":
        message = "Snapshot is not a render price type; use /v1/snapshots"
    else:
        message = f"the account does not hold the {price_type} entitlement"
    return ApiError(403, "price_type_not_allowed", message, {"price_type": price_type})


async def charge_and_insert(
    new: jobs.NewJob, quote: pricing.PriceQuote, by: Submitter
) -> jobs.JobRow:
    """Write the job and its charge atomically; 403 for a price type ``by`` may not submit,
    409 for a used code, 402 when money is short.

    Every check runs under the account lock, so concurrent submits of one user are serialised
    and each sees the other's committed charge and redemption, and the entitlements as they
    stand at that instant. A refusal writes nothing.
    """
    price = new.paid_price_minor
    async with state().db.transaction() as conn:
        account = await ledger.lock(conn, new.user_id)
        if not may_submit(new.price_type, account.entitlements, by):
            raise price_type_not_allowed(new.price_type)
        balance = account.balance_minor
        code = new.discount_code
        if code is not None and await jobs.discount_used(conn, new.user_id, code):
            raise conflict(
                "discount_code_used", "this discount code was already used", discount_code=code
            )
        if balance < price:
            raise insufficient_balance("this render", balance, price)
        row = await jobs.insert_job(conn, new)
        await _record_charge(conn, row, quote)
    return row


async def _record_charge(conn: Connection, row: jobs.JobRow, quote: pricing.PriceQuote) -> None:
    price = quote.total_minor
    if price > 0:
        await ledger.append(conn, row.user_id, "charge", -price, job_id=row.id, note="render")
    if row.discount_code is not None:
        await jobs.redeem_discount(conn, row.user_id, row.discount_code, row.id)
    meta = {
        "price_minor": price,
        "base_minor": quote.base_minor,
        "discount_minor": quote.discount_minor,
        "tip_minor": quote.tip_minor,
        "discount_code": row.discount_code,
        "frames": row.total_frames,
        "frame_rate": row.frame_rate,
        "pricing": quote.breakdown,
    }
    await jobs.log(conn, row.id, "info", f"submitted (price {price} minor units)", meta=meta)


# ------------------------------------------------------------------ reads


@bp.get("/v1/renders")
async def list_renders() -> dict[str, Any]:
    """The caller's jobs; with ``scope=all`` (admins and services) everyone's."""
    principal = caller()
    scope = request.args.get("scope") or "mine"
    if scope not in ("mine", "all"):
        raise unprocessable(
            "query parameter scope is invalid",
            [{"field": "scope", "message": "must be mine or all"}],
        )
    if scope == "all":
        require_admin(principal)
    user_id = None if scope == "all" else acting_user(principal)
    status = request.args.get("status") or None
    if status is not None and status not in submit.STEPS:
        raise unprocessable(
            "query parameter status is invalid",
            [{"field": "status", "message": f"must be one of {', '.join(submit.STEPS)}"}],
        )
    page = page_from_query()
    rows, total = await jobs.list_jobs(state().db, user_id, status, page.page_size, page.offset)
    return {"data": [job_json(row) for row in rows], "meta": page.meta(total)}


async def visible_job(job_id: str) -> jobs.JobRow:
    """The render job if the caller may see it (owner, admin, service); else 404."""
    principal = caller()
    jid = path_uuid("job_id", job_id)
    row = await jobs.get_job(state().db, jid)
    # Snapshot jobs live in the same table but belong to /v1/snapshots.
    if row is None or row.kind != "Render":
        raise not_found("render job", jid)
    require_owner(principal, row.user_id, "render job", jid)
    return row


@bp.get("/v1/renders/<job_id>")
async def get_render(job_id: str) -> dict[str, Any]:
    row = await visible_job(job_id)
    db = state().db
    frames = await jobs.frame_jobs(db, row.id)
    export = None
    if row.export_id is not None:
        record = await db.fetchrow(EXPORT, row.export_id)
        export = None if record is None else _plain(record)
    return {
        **job_json(row),
        "frame_jobs": [frame_job_json(f) for f in frames],
        "retry_count": row.retry_count,
        "repair_attempts": row.repair_attempts,
        "export": export,
    }


@bp.get("/v1/renders/<job_id>/logs")
async def get_render_logs(job_id: str) -> dict[str, Any]:
    """Lines at ``level`` or above (default ``debug``: all), oldest first, at most 1000."""
    row = await visible_job(job_id)
    level = request.args.get("level") or "debug"
    if level not in jobs.LEVELS:
        raise unprocessable(
            "query parameter level is invalid",
            [{"field": "level", "message": f"must be one of {', '.join(jobs.LEVELS)}"}],
        )
    records = await jobs.logs(state().db, row.id, level)
    return {"logs": [_plain(r) for r in records]}
