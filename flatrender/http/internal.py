"""Node protocol v1 (DESIGN §4): the internal endpoints node agents call, HMAC-signed.

Every request is authenticated before its body is trusted: the signer is the node in the path,
or ``node_id`` in the body for ``/internal/render/jobs/...``. An unknown node, a missing, stale or
malformed signature, another node's signature and a tampered body all get the same 401. Secrets
are derived per request and never logged.
"""

from __future__ import annotations

import time
from datetime import datetime, timedelta
from typing import Any
from uuid import UUID

import attrs
from quart import Blueprint, request

from flatrender.actors import job, node
from flatrender.actors.fleet import Fleet, NodeUnknown
from flatrender.actors.jobs import JobUnknown
from flatrender.actors.mailbox import ActorUnavailable
from flatrender.clock import utc_now
from flatrender.domain import signing
from flatrender.domain.model import HealthSample
from flatrender.http.codec import parse_json, structure
from flatrender.http.common import state
from flatrender.http.errors import (
    ApiError,
    conflict,
    not_found,
    unauthorized,
    unprocessable,
)
from flatrender.persistence import nodes

bp = Blueprint("internal", __name__)

INT4_MAX = 2**31 - 1
# Crash logs are kept to their tail; the full log lives at log_file_url.
MAX_ERROR_LOG = 64 * 1024
# A node's own clock is trusted for sample times only when it agrees with ours this closely.
SAMPLE_CLOCK_SKEW = timedelta(seconds=60)


def fleet() -> Fleet:
    actors = state().actors
    if actors is None or actors.fleet is None:
        raise ApiError(503, "service_unavailable", "the node fleet is starting, retry")
    return actors.fleet


async def signed_body(node_id: UUID | None) -> tuple[UUID, bytes]:
    """Authenticate the request; ``node_id`` None: the signer is named by the body."""
    raw = await request.get_data(as_text=False)
    assert isinstance(raw, bytes)
    header = request.headers.get(signing.HEADER)
    if not header:
        raise unauthorized(f"missing {signing.HEADER} header")
    if node_id is None:
        node_id = _body_node_id(raw)
    auth = state().config.auth
    known = fleet().knows(node_id)
    secret = signing.node_secret(auth.node_master_key, node_id)
    valid = signing.verify(
        secret, header, request.method, request.path, raw, time.time(), auth.signature_max_skew_sec
    )
    if not (known and valid):
        raise unauthorized("bad node signature")
    return node_id, raw


def _body_node_id(raw: bytes) -> UUID:
    try:
        data = parse_json(raw)
        return UUID(data["node_id"])
    except (ApiError, KeyError, TypeError, ValueError, AttributeError):
        raise unauthorized("the body must name the signing node in node_id") from None


def path_node(value: str) -> UUID:
    try:
        return UUID(value)
    except ValueError:
        raise unauthorized("bad node signature") from None


async def call_node(node_id: UUID, make: Any) -> Any:
    try:
        return await fleet().call(node_id, make)
    except NodeUnknown:
        raise unauthorized("bad node signature") from None
    except ActorUnavailable:
        raise ApiError(503, "service_unavailable", "the node's actor is busy, retry") from None


# ------------------------------------------------------------------ bodies


@attrs.frozen
class HeartbeatIn:
    cpu_pct: int = 0
    ram_available_mb: int = 0
    ae_running: bool = False
    cache_used_gb: int = 0
    node_id: UUID | None = None
    recorded_at: datetime | None = None
    status: str | None = None
    current_job_id: UUID | None = None
    current_frame: int | None = None
    acked_command_ids: list[UUID] = attrs.Factory(list)

    def errors(self, path_node_id: UUID) -> list[dict[str, str]]:
        errors = []
        if self.node_id is not None and self.node_id != path_node_id:
            errors.append({"field": "$.node_id", "message": "differs from the node in the path"})
        if not 0 <= self.cpu_pct <= 100:
            errors.append({"field": "$.cpu_pct", "message": "must be between 0 and 100"})
        for name in ("ram_available_mb", "cache_used_gb", "current_frame"):
            value = getattr(self, name)
            if value is not None and not 0 <= value <= INT4_MAX:
                errors.append({"field": f"$.{name}", "message": f"must be 0..{INT4_MAX}"})
        if len(self.acked_command_ids) > 1000:
            errors.append({"field": "$.acked_command_ids", "message": "at most 1000 ids"})
        return errors


@attrs.frozen
class OnlineIn:
    node_agent_version: str
    current_ae_version: str
    available_ae_versions: list[str] = attrs.Factory(list)
    ram_gb: int = 0
    cpu_cores: int = 0
    cache_used_gb: int = 0
    cached_template_md5s: list[str] = attrs.Factory(list)

    def errors(self, _: UUID | None) -> list[dict[str, str]]:
        errors = []
        for name in ("ram_gb", "cpu_cores", "cache_used_gb"):
            if not 0 <= getattr(self, name) <= INT4_MAX:
                errors.append({"field": f"$.{name}", "message": f"must be 0..{INT4_MAX}"})
        for name in ("node_agent_version", "current_ae_version"):
            if not 0 < len(getattr(self, name)) <= 100 or "\x00" in getattr(self, name):
                errors.append({"field": f"$.{name}", "message": "must be 1..100 characters"})
        if len(self.cached_template_md5s) > 10_000:
            errors.append({"field": "$.cached_template_md5s", "message": "at most 10000"})
        return errors


@attrs.frozen
class CacheUpdateIn:
    action: str
    aep_file_md5: str
    project_id: UUID | None = None
    file_size_bytes: int | None = None
    cache_used_gb: int | None = None
    error_message: str | None = None


CACHE_ACTIONS = ("Downloaded", "Evicted", "Verified", "Failed")


def validated(raw: bytes, cls: type[Any], path_node_id: UUID | None = None) -> Any:
    value = structure(parse_json(raw), cls)
    errors: list[dict[str, str]] = value.errors(path_node_id) if hasattr(value, "errors") else []
    if errors:
        raise unprocessable("the request body is invalid", errors)
    return value


# ------------------------------------------------------------------ endpoints


@bp.post("/v1/internal/nodes/<node_id>/heartbeat")
async def heartbeat(node_id: str) -> dict[str, Any]:
    nid, raw = await signed_body(path_node(node_id))
    body: HeartbeatIn = validated(raw, HeartbeatIn, nid)
    now = utc_now()
    recorded = body.recorded_at
    if recorded is None or abs(recorded - now) > SAMPLE_CLOCK_SKEW:
        recorded = now
    sample = HealthSample(
        node_id=nid,
        recorded_at=recorded,
        status=body.status or "",
        cpu_pct=body.cpu_pct,
        ram_available_mb=body.ram_available_mb,
        ae_running=body.ae_running,
        current_job_id=body.current_job_id,
        current_frame=body.current_frame,
        cache_used_gb=body.cache_used_gb,
    )
    answer: node.HeartbeatAnswer = await call_node(
        nid, lambda reply: node.Heartbeat(sample, tuple(body.acked_command_ids), reply)
    )
    return {
        "next_heartbeat_in_sec": answer.next_heartbeat_in_sec,
        "pending_commands": [c.wire() for c in answer.commands],
    }


@bp.post("/v1/internal/nodes/<node_id>/online")
async def online(node_id: str) -> dict[str, Any]:
    nid, raw = await signed_body(path_node(node_id))
    body: OnlineIn = validated(raw, OnlineIn)
    info = nodes.OnlineInfo(
        node_agent_version=body.node_agent_version,
        current_ae_version=body.current_ae_version,
        available_ae_versions=body.available_ae_versions or [body.current_ae_version],
        ram_gb=body.ram_gb,
        cpu_cores=body.cpu_cores,
        cache_used_gb=body.cache_used_gb,
        cached_template_md5s=sorted(set(body.cached_template_md5s)),
    )
    await call_node(nid, lambda reply: node.Online(info, reply))
    return {
        "acknowledged": True,
        "heartbeat_interval_sec": state().config.nodes.heartbeat_interval_sec,
    }


@bp.post("/v1/internal/nodes/<node_id>/cache-update")
async def cache_update(node_id: str) -> tuple[str, int]:
    nid, raw = await signed_body(path_node(node_id))
    body: CacheUpdateIn = validated(raw, CacheUpdateIn)
    if body.action not in CACHE_ACTIONS:
        raise unprocessable(
            "unknown cache action",
            [{"field": "$.action", "message": f"must be one of {', '.join(CACHE_ACTIONS)}"}],
        )
    if body.cache_used_gb is not None and body.cache_used_gb < 0:
        raise unprocessable(
            "cache_used_gb must not be negative",
            [{"field": "$.cache_used_gb", "message": "must not be negative"}],
        )
    await call_node(
        nid,
        lambda reply: node.CacheChanged(body.action, body.aep_file_md5, body.cache_used_gb, reply),
    )
    return "", 204


@attrs.frozen
class CrashIn:
    node_id: UUID
    frame_job_id: UUID | None = None
    last_known_frame: int | None = None
    crash_signal: str = ""
    ae_version: str = ""
    error_log_tail: str = ""
    log_file_url: str = ""


@attrs.frozen
class FrameIn:
    node_id: UUID
    frame_job_id: UUID
    frame_number: int
    file_size_bytes: int | None = None
    completed_at: datetime | None = None


@attrs.frozen
class ReplicaReadyIn:
    node_id: UUID
    replica_path: str
    replica_md5: str | None = None


# One round trip for both checks (a node's reports are the hot path).
JOB_AND_FRAME_JOB = """
SELECT EXISTS (SELECT 1 FROM render_jobs WHERE id = $1) AS job,
       $2::uuid IS NULL OR EXISTS (SELECT 1 FROM frame_jobs WHERE id = $2 AND job_id = $1)
           AS frame_job
"""
JOB_ENDED = (
    "SELECT 1 FROM render_jobs WHERE id = $1 AND step IN ('Completed', 'Failed', 'Cancelled')"
)


def job_uuid(job_id: str) -> UUID:
    try:
        return UUID(job_id)
    except ValueError:
        raise not_found("render job", job_id) from None


async def existing_job(job_id: str | UUID, frame_job_id: UUID | None = None) -> UUID:
    jid = job_id if isinstance(job_id, UUID) else job_uuid(job_id)
    found = await state().db.fetchrow(JOB_AND_FRAME_JOB, jid, frame_job_id)
    if not found["job"]:
        raise not_found("render job", jid)
    if not found["frame_job"]:
        raise not_found("frame job", frame_job_id)
    return jid


def stale() -> ApiError:
    return conflict("stale_assignment", "this work is no longer assigned to this node")


async def call_job(job_id: UUID, make: Any) -> Any:
    """Route to the job's actor; a job that has ended answers 409 (the node drops the work)."""
    actors = state().actors
    if actors is None:
        raise ApiError(503, "service_unavailable", "the job system is starting, retry")
    try:
        return await actors.jobs.call(job_id, make)
    except JobUnknown:
        raise stale() from None
    except ActorUnavailable:
        # An actor that just ended its job closes its inbox before it is gone.
        if await state().db.fetchval(JOB_ENDED, job_id):
            raise stale() from None
        raise ApiError(503, "service_unavailable", "the job's actor is busy, retry") from None


async def report_to_job(jid: UUID, frame_job_id: UUID, make: Any) -> Any:
    """Route a node's report on a range to the job's actor, which knows its own ranges: the
    job and the range are looked up in PostgreSQL only when the report is refused, for a 404
    (no such job or range) rather than the 409 ``stale_assignment``. A hot path: no database
    round trip before the actor on an accepted report."""
    try:
        result = await call_job(jid, make)
    except ApiError as e:
        if e.status == 409:
            await existing_job(jid, frame_job_id)
        raise
    if not result:
        await existing_job(jid, frame_job_id)
        raise stale()
    return result


@bp.post("/v1/internal/render/jobs/<job_id>/crash")
async def crash(job_id: str) -> dict[str, Any]:
    nid, raw = await signed_body(None)
    body: CrashIn = validated(raw, CrashIn)
    jid = job_uuid(job_id)
    report = nodes.CrashReport(
        node_id=nid,
        render_job_id=jid,
        frame_job_id=body.frame_job_id,
        last_known_frame=body.last_known_frame,
        crash_signal=body.crash_signal,
        ae_version=body.ae_version,
        error_log=body.error_log_tail[-MAX_ERROR_LOG:],
        log_file_url=body.log_file_url,
    )
    if body.frame_job_id is None:
        # A crash outside any range (idle, preparing): counted against the node only.
        await existing_job(jid)
        outcome: node.CrashOutcome = await call_node(
            nid, lambda reply: node.RecordCrash(report, reply)
        )
        return {"action_recommended": outcome.crash.recovery_action, "reassigned_to_node_id": None}
    verdict: job.CrashAnswer = await report_to_job(
        jid, body.frame_job_id, lambda reply: job.CrashReported(report, reply)
    )
    reassigned = verdict.reassigned_to_node_id
    return {
        "action_recommended": verdict.action.value,
        "reassigned_to_node_id": None if reassigned is None else str(reassigned),
    }


@bp.post("/v1/internal/render/jobs/<job_id>/frames")
async def frames(job_id: str) -> tuple[str, int]:
    nid, raw = await signed_body(None)
    body: FrameIn = validated(raw, FrameIn)
    await report_to_job(
        job_uuid(job_id),
        body.frame_job_id,
        lambda reply: job.ReportFrame(
            nid,
            body.frame_job_id,
            body.frame_number,
            body.file_size_bytes,
            body.completed_at,
            reply,
        ),
    )
    return "", 204


@bp.post("/v1/internal/render/jobs/<job_id>/replica-ready")
async def replica_ready(job_id: str) -> tuple[str, int]:
    nid, raw = await signed_body(None)
    body: ReplicaReadyIn = validated(raw, ReplicaReadyIn)
    jid = await existing_job(job_id)
    accepted = await call_job(
        jid, lambda reply: job.ReplicaReady(nid, body.replica_path, body.replica_md5, reply)
    )
    if not accepted:
        raise stale()
    return "", 204
