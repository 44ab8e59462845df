"""Node protocol v1 (DESIGN §4): the internal endpoints node agents call, HMAC-signed.

Every request is authenticated before its body is parsed: the signer is the node in the path, or
for ``/internal/render/jobs/...`` the one ``"node_id": "<uuid>"`` found in the raw body by a
linear scan (no JSON decoding: an unauthenticated client costs a regex search and at most one
sha256 of a body Quart caps at ``MAX_CONTENT_LENGTH``, 413 beyond). Once the signature verifies,
the body is parsed (400/422 for bad content) and its ``node_id`` must be that signer. An unknown
node, a missing, stale or malformed signature, another node's signature and a tampered body all
get the same 401. Secrets are derived per request and never logged. A signature that verifies is
remembered before the request is served (:class:`~flatrender.domain.replay.ReplayGuard`, one per
app, created with the app): the same one again within the window is a 401 ``replayed``, even
while the first is still in flight, and so is one dated before the guard was created (signed for
a previous daemon process).
"""

from __future__ import annotations

import re
import time
from datetime import timedelta
from typing import Any, TypeVar
from uuid import UUID

from flask.sansio.blueprints import BlueprintSetupState
from quart import Blueprint, current_app, request

from flatrender.actors import job, node
from flatrender.actors.fleet import Fleet, NodeUnknown
from flatrender.actors.jobs import JobUnknown
from flatrender.actors.mailbox import ActorUnavailable
from flatrender.clock import utc_now
from flatrender.domain import signing
from flatrender.domain.model import HealthSample
from flatrender.domain.replay import Admission, ReplayGuard
from flatrender.http.common import state
from flatrender.http.errors import (
    ApiError,
    conflict,
    not_found,
    unauthorized,
    unprocessable,
)
from flatrender.http.node_bodies import (
    MAX_ERROR_LOG,
    CacheUpdateIn,
    CrashIn,
    FrameIn,
    HeartbeatIn,
    OnlineIn,
    ReplicaReadyIn,
    validated,
)
from flatrender.persistence import job_state, nodes

bp = Blueprint("internal", __name__)

_REPLAYS = "flatrender.replays"

Report = TypeVar("Report", CrashIn, FrameIn, ReplicaReadyIn)


@bp.record_once
def _install_replay_guard(setup: BlueprintSetupState) -> None:
    setup.app.extensions[_REPLAYS] = ReplayGuard(started_at=time.time())


def replays() -> ReplayGuard:
    guard = current_app.extensions[_REPLAYS]
    assert isinstance(guard, ReplayGuard)
    return guard


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
    signed = signing.parse(header)
    if signed is None:
        raise unauthorized("bad node signature")
    if node_id is None:
        node_id = _signer_named_by(raw)
    auth = state().config.auth
    known = fleet().knows(node_id)
    secret = signing.node_secret(auth.node_master_key, node_id)
    now, window = time.time(), auth.signature_max_skew_sec
    valid = signing.verify_signed(secret, signed, request.method, request.path, raw, now, window)
    if not (known and valid):
        raise unauthorized("bad node signature")
    match replays().admit(node_id, signed, now, window):
        case Admission.ADMITTED:
            return node_id, raw
        case Admission.REPLAYED:
            raise ApiError(401, "replayed", "this signature was already used: sign each request")
        case Admission.TOO_OLD:
            raise ApiError(
                401, "replayed", "signed before this daemon remembers signatures: sign it again"
            )
        case Admission.NODE_FULL | Admission.FULL:
            raise ApiError(
                429, "too_many_requests", "too many signed requests within the window, retry"
            )


# The signer's key and value as an agent writes them (a plain uuid, no escapes). Linear: a literal
# prefix, then no backtracking. A match may be no top-level key (nested, or the tail of a key
# that holds an escaped quote): the decoded body's node_id is compared once the signature holds.
_NODE_ID = re.compile(rb'"node_id"[ \t\n\r]*:[ \t\n\r]*"([^"\\]{0,64})"')


def _signer_named_by(raw: bytes) -> UUID:
    """The node a report names as its signer, read from the raw body without decoding it (the
    body is unauthenticated). Named zero times, twice or more, or not as a uuid: a 401. Whether
    it is the body's own top-level ``node_id`` is checked once the signature verified
    (:func:`signed_report`)."""
    found = _NODE_ID.finditer(raw)
    first, second = next(found, None), next(found, None)
    if first is not None and second is None:
        try:
            return UUID(first.group(1).decode("ascii"))
        except (UnicodeDecodeError, ValueError):
            pass
    raise unauthorized("the body must name the signing node once, in node_id")


async def signed_report(cls: type[Report]) -> tuple[UUID, Report]:
    """A ``/internal/render/jobs/...`` report: authenticated, then validated, and its
    ``node_id`` is the signer's (a node cannot report in another's name)."""
    nid, raw = await signed_body(None)
    body: Report = validated(raw, cls)
    if body.node_id != nid:
        raise unauthorized("node_id is not the signing node")
    return nid, body


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
    await call_node(
        nid,
        lambda reply: node.CacheChanged(body.action, body.aep_file_md5, body.cache_used_gb, reply),
    )
    return "", 204


# One round trip for both checks (a node's reports are the hot path).
JOB_AND_FRAME_JOB = """
SELECT EXISTS (SELECT 1 FROM render_jobs WHERE id = $1) AS job,
       $2::uuid IS NULL OR EXISTS (SELECT 1 FROM frame_jobs WHERE id = $2 AND job_id = $1)
           AS frame_job
"""
JOB_PROJECT = "SELECT saved_project_id, project_version FROM render_jobs WHERE id = $1"
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
    nid, body = await signed_report(CrashIn)
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
    nid, body = await signed_report(FrameIn)
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
    nid, body = await signed_report(ReplicaReadyIn)
    jid = job_uuid(job_id)
    row = await state().db.fetchrow(JOB_PROJECT, jid)
    if row is None:
        raise not_found("render job", jid)
    # The key is the job's own (DESIGN §4): a node naming any other object (another customer's
    # export, nothing at all) would have later jobs hand it out and the Reaper delete it.
    if body.replica_path != job_state.replica_key(row["saved_project_id"], row["project_version"]):
        raise unprocessable(
            "replica_path is not the replica_key this job issued",
            [{"field": "$.replica_path", "message": "must equal the PrepareReplica's replica_key"}],
        )
    accepted = await call_job(
        jid, lambda reply: job.ReplicaReady(nid, body.replica_path, body.replica_md5, reply)
    )
    if not accepted:
        raise stale()
    return "", 204
