"""A render job's steps and its frame ranges (DESIGN §3) as one pure function: ``decide``.

The state, events and effects it works on, and the lifecycle of steps and range statuses, are
declared in :mod:`flatrender.domain.job_model` and re-exported here. Terminal steps accept
nothing: every event on them is ``IGNORED``.

Lease fencing: a report from a node that does not hold the range, or for a range that is not
``Assigned``/``Rendering``, is ``STALE`` (HTTP 409 ``stale_assignment``); a frame already reported
by the holder is ``UNCHANGED`` (idempotent). :attr:`Decision.fenced` is what a node-facing handler
checks.

Trimming (``TrimmedTail``): the holder's range ends earlier and the tail becomes a new ``Pending``
range. A range is trimmed at most once, and a tail not before its parent's trim settled. If the
holder proves the trim came too late (it reports a frame past its new end), the trim is undone
and the tail withdrawn; if the tail is already rendered by then, the holder's range is refused
and requeued without spending an attempt (the race was ours, not the frames'). A holder that
reports its new last frame as an ordinary one before the trim reached it looks finished: its
output then fails validation and the range is requeued (``trim_margin_frames`` makes this rare).
"""

from __future__ import annotations

from typing import assert_never
from uuid import UUID

import attrs

from flatrender.domain.job_decisions import RUNNING as _RUNNING
from flatrender.domain.job_decisions import UNVALIDATED as _UNVALIDATED
from flatrender.domain.job_decisions import check_plan as _check_plan
from flatrender.domain.job_decisions import frames_of as _frames
from flatrender.domain.job_decisions import ignored as _ignored
from flatrender.domain.job_decisions import stale as _stale
from flatrender.domain.job_decisions import unchanged as _unchanged
from flatrender.domain.job_decisions import with_ranges as _with
from flatrender.domain.job_model import Abort as Abort
from flatrender.domain.job_model import AbortMerge as AbortMerge
from flatrender.domain.job_model import CacheSnapshot as CacheSnapshot
from flatrender.domain.job_model import CancelRender as CancelRender
from flatrender.domain.job_model import CancelRequested as CancelRequested
from flatrender.domain.job_model import CrashDecided as CrashDecided
from flatrender.domain.job_model import Decision as Decision
from flatrender.domain.job_model import Effect as Effect
from flatrender.domain.job_model import ExportRecorded as ExportRecorded
from flatrender.domain.job_model import FailSnapshot as FailSnapshot
from flatrender.domain.job_model import FrameReported as FrameReported
from flatrender.domain.job_model import JobEvent as JobEvent
from flatrender.domain.job_model import Log as Log
from flatrender.domain.job_model import MergeFailed as MergeFailed
from flatrender.domain.job_model import NodeLost as NodeLost
from flatrender.domain.job_model import NodeSucceeded as NodeSucceeded
from flatrender.domain.job_model import Outcome as Outcome
from flatrender.domain.job_model import OutputValidated as OutputValidated
from flatrender.domain.job_model import QueueRange as QueueRange
from flatrender.domain.job_model import RangeAssigned as RangeAssigned
from flatrender.domain.job_model import RefundCancelShare as RefundCancelShare
from flatrender.domain.job_model import RefundFull as RefundFull
from flatrender.domain.job_model import ReplicaAvailable as ReplicaAvailable
from flatrender.domain.job_model import ReplicaBuilderAssigned as ReplicaBuilderAssigned
from flatrender.domain.job_model import ReplicaBuilt as ReplicaBuilt
from flatrender.domain.job_model import ReplicaFailed as ReplicaFailed
from flatrender.domain.job_model import ReplicaMissing as ReplicaMissing
from flatrender.domain.job_model import RequestReplicaBuilder as RequestReplicaBuilder
from flatrender.domain.job_model import RequeueRange as RequeueRange
from flatrender.domain.job_model import SendPrepareReplica as SendPrepareReplica
from flatrender.domain.job_model import SendRenderFrames as SendRenderFrames
from flatrender.domain.job_model import SendTrimRange as SendTrimRange
from flatrender.domain.job_model import SnapshotRendering as SnapshotRendering
from flatrender.domain.job_model import StartMerge as StartMerge
from flatrender.domain.job_model import TrimmedTail as TrimmedTail
from flatrender.domain.job_model import ValidateOutput as ValidateOutput
from flatrender.domain.job_state import JobPolicy as JobPolicy
from flatrender.domain.job_state import JobState as JobState
from flatrender.domain.job_state import JobStep as JobStep
from flatrender.domain.job_state import RangeState as RangeState
from flatrender.domain.job_state import RangeStatus as RangeStatus
from flatrender.domain.job_state import Trim as Trim
from flatrender.domain.job_state import replacement_id as replacement_id
from flatrender.domain.pricing import cancel_refund

J = JobStep
R = RangeStatus


# ------------------------------------------------------------------ decide


def decide(state: JobState, event: JobEvent, policy: JobPolicy) -> Decision:
    """The job's next state and the effects the actor performs, in order, after persisting it.

    Raises :class:`ValueError` when the ranges of ``ReplicaAvailable``/``ReplicaBuilt`` are not
    fresh ``Pending`` ranges tiling the job's frames (a bug in the caller's plan).
    """
    if state.terminal:
        return _ignored(state, f"the job is {state.step.value}: {type(event).__name__} ignored")
    step = state.step
    match event:
        case ReplicaAvailable(replica_key=key, ranges=ranges):
            if step in (J.QUEUED, J.PREPARING):
                return _start_rendering(state, key, ranges, "the replica exists")
            return _unchanged(state, "the replica is already in place")
        case ReplicaMissing():
            if step is not J.QUEUED:
                return _ignored(state, f"no replica to build while {step.value}")
            return Decision(
                attrs.evolve(state, step=J.PREPARING),
                (RequestReplicaBuilder(), Log("info", "building the replica")),
            )
        case ReplicaBuilderAssigned(node_id=node):
            if step is J.PREPARING and state.replica_node_id == node:
                return _unchanged(state, "the node already builds the replica")
            if step is not J.PREPARING or state.replica_node_id is not None:
                return _ignored(state, "no replica builder wanted")
            return Decision(
                attrs.evolve(state, replica_node_id=node),
                (SendPrepareReplica(node), Log("info", "the node builds the replica", node)),
            )
        case ReplicaBuilt(replica_key=key, ranges=ranges):
            if step is J.PREPARING:
                return _start_rendering(state, key, ranges, "the replica was built")
            if step in (J.RENDERING, J.MERGING):
                return _unchanged(state, "the replica is already in place")
            return _ignored(state, f"no replica was being built while {step.value}")
        case ReplicaFailed(error=error):
            if step is not J.PREPARING:
                return _ignored(state, f"no replica was being built while {step.value}")
            return _fail_job(state, f"the replica could not be built: {error}")
        case RangeAssigned():
            return _range_assigned(state, event)
        case FrameReported():
            return _frame_reported(state, event)
        case OutputValidated():
            return _output_validated(state, event, policy)
        case NodeLost(node_id=node):
            return _node_lost(state, node, policy)
        case CrashDecided():
            return _crash_decided(state, event, policy)
        case TrimmedTail():
            return _trimmed_tail(state, event)
        case CancelRequested(reason=reason):
            return _cancel(state, reason)
        case ExportRecorded(export_id=export_id):
            if step is not J.MERGING:
                return _ignored(state, f"no merge was running while {step.value}")
            return Decision(
                attrs.evolve(state, step=J.COMPLETED, export_id=export_id),
                (Log("info", f"export {export_id} recorded: the job is complete"),),
            )
        case MergeFailed(error=error):
            if step is not J.MERGING:
                return _ignored(state, f"no merge was running while {step.value}")
            return _fail_job(state, f"the segments could not be merged: {error}")
        case Abort(message=message):
            return _fail_job(state, message)
        case _:
            assert_never(event)


def _start_rendering(
    state: JobState, key: str, ranges: tuple[RangeState, ...], why: str
) -> Decision:
    """Raises :class:`ValueError` unless ``ranges`` are fresh Pending ranges tiling the job."""
    _check_plan(state, ranges)
    new = attrs.evolve(
        state, step=J.RENDERING, replica_key=key, replica_node_id=None, ranges=ranges
    )
    effects: list[Effect] = [QueueRange(r) for r in ranges]
    effects += [SnapshotRendering()] if state.snapshot else []
    effects.append(Log("info", f"{why}: rendering in {len(ranges)} ranges"))
    return Decision(new, tuple(effects))


def _range_assigned(state: JobState, ev: RangeAssigned) -> Decision:
    r = state.range(ev.range_id)
    if state.step is not J.RENDERING or r is None:
        return _ignored(state, f"no range {ev.range_id} to assign while {state.step.value}")
    if r.status in _RUNNING and r.node_id == ev.node_id:
        return _unchanged(state, "the range is already assigned to this node")
    if r.status is not R.PENDING:
        return _stale(state, f"range {r.id} is {r.status.value}, not Pending", ev.node_id)
    assigned = attrs.evolve(r, status=R.ASSIGNED, node_id=ev.node_id)
    return Decision(
        _with(state, assigned),
        (
            SendRenderFrames(r.id, ev.node_id, r.start_frame, r.end_frame, r.attempt),
            Log("info", f"{_frames(r)} (attempt {r.attempt}) assigned", ev.node_id),
        ),
    )


def _frame_reported(state: JobState, ev: FrameReported) -> Decision:
    r = state.range(ev.range_id)
    if r is None:
        return _stale(state, f"range {ev.range_id} is not this job's", ev.node_id)
    if r.node_id != ev.node_id:
        return _stale(state, f"range {r.id} is not held by this node", ev.node_id)
    if ev.frame in r.reported_frames and r.status is not R.FAILED:
        return _unchanged(state, f"frame {ev.frame} was already reported")
    if r.status not in _RUNNING:
        return _stale(state, f"range {r.id} is {r.status.value}", ev.node_id)
    if r.trim is not None and r.end_frame < ev.frame <= r.trim.original_end:
        return _trim_too_late(state, r, r.trim, ev)
    if not r.start_frame <= ev.frame <= r.end_frame:
        return _stale(state, f"frame {ev.frame} is outside {_frames(r)}", ev.node_id)
    return _record_frame(state, r, ev.frame, [])


def _record_frame(state: JobState, r: RangeState, frame: int, effects: list[Effect]) -> Decision:
    reported = r.reported_frames | {frame}
    if frame != r.end_frame:
        return Decision(
            _with(state, attrs.evolve(r, status=R.RENDERING, reported_frames=reported)),
            tuple(effects),
        )
    assert r.node_id is not None
    effects.append(ValidateOutput(r.id, r.node_id, r.start_frame, r.end_frame, r.attempt))
    rendered = attrs.evolve(r, status=R.RENDERED, reported_frames=reported)
    return Decision(_with(state, rendered), tuple(effects))


def _trim_too_late(state: JobState, r: RangeState, trim: Trim, ev: FrameReported) -> Decision:
    """The holder rendered past its trimmed end: it never applied the trim."""
    tail = next((t for t in state.current_ranges if t.start_frame == r.end_frame + 1), None)
    if tail is not None and tail.status in (R.PENDING, *_RUNNING):
        effects: list[Effect] = [
            Log("warn", f"trim of {_frames(r)} came too late: tail withdrawn", ev.node_id)
        ]
        if tail.node_id is not None and tail.status in _RUNNING:
            effects.append(CancelRender(tail.id, tail.node_id))
        withdrawn = attrs.evolve(tail, status=R.FAILED, last_error="withdrawn: trim came too late")
        restored = attrs.evolve(r, end_frame=trim.original_end, trim=None)
        return _record_frame(_with(state, withdrawn, restored), restored, ev.frame, effects)
    # The tail's frames are rendered elsewhere: the holder's output would overlap them.
    failed = attrs.evolve(
        r, status=R.FAILED, last_error="trim came too late: tail already rendered"
    )
    replacement = attrs.evolve(
        r,
        id=replacement_id(r.id),
        status=R.PENDING,
        node_id=None,
        reported_frames=frozenset(),
        last_error=None,
        replaces_id=r.id,
        trim=None,
    )
    reason = f"{_frames(r)}: trim came too late and the tail is rendered; range requeued"
    return Decision(
        _with(state, failed, replacement),
        (RequeueRange(r.id, replacement), Log("warn", reason, ev.node_id)),
        Outcome.STALE,
        reason,
    )


def _output_validated(state: JobState, ev: OutputValidated, policy: JobPolicy) -> Decision:
    r = state.range(ev.range_id)
    if r is not None and r.status is R.VALIDATED and ev.ok:
        return _unchanged(state, "the range is already validated")
    if state.step is not J.RENDERING or r is None or r.status is not R.RENDERED:
        return _ignored(state, f"range {ev.range_id} is not awaiting validation")
    assert r.node_id is not None
    if not ev.ok:
        error = ev.error or "no reason given"
        return _requeue(state, [r], f"output validation failed: {error}", policy)
    new = _with(state, attrs.evolve(r, status=R.VALIDATED))
    effects: list[Effect] = [NodeSucceeded(r.node_id), Log("info", f"{_frames(r)} validated")]
    done = all(c.status is R.VALIDATED for c in new.current_ranges)
    if done and state.snapshot:  # no merge: the PNG is the image (its thumbnail is stored)
        new = attrs.evolve(new, step=J.COMPLETED)
        cache = CacheSnapshot(ev.width or 0, ev.height or 0, r.id)
        effects += [cache, Log("info", "snapshot cached")]
    elif done:
        order = tuple(c.id for c in sorted(new.current_ranges, key=lambda c: c.order_value))
        new = attrs.evolve(new, step=J.MERGING)
        effects += [StartMerge(order), Log("info", "every range validated: merging")]
    return Decision(new, tuple(effects))


def _requeue(state: JobState, lost: list[RangeState], error: str, policy: JobPolicy) -> Decision:
    """Fail ``lost`` and queue each again with ``attempt + 1``, or fail the job if one can't."""
    failed = [attrs.evolve(r, status=R.FAILED, last_error=error) for r in lost]
    exhausted = next((r for r in lost if r.attempt + 1 > policy.max_attempts), None)
    if exhausted is not None:
        message = (
            f"{_frames(exhausted)} failed {exhausted.attempt} attempts"
            f" (at most {policy.max_attempts}): {error}"
        )
        return _fail_job(_with(state, *failed), message)
    effects: list[Effect] = []
    replacements: list[RangeState] = []
    for r in lost:
        new = RangeState(
            id=replacement_id(r.id),
            start_frame=r.start_frame,
            end_frame=r.end_frame,
            attempt=r.attempt + 1,
            replaces_id=r.id,
        )
        replacements.append(new)
        effects.append(RequeueRange(r.id, new))
        effects.append(
            Log("warn", f"{_frames(r)} requeued as attempt {new.attempt}: {error}", r.node_id)
        )
    return Decision(_with(state, *failed, *replacements), tuple(effects))


def _node_lost(state: JobState, node: UUID, policy: JobPolicy) -> Decision:
    if state.step is J.PREPARING and state.replica_node_id == node:
        return Decision(
            attrs.evolve(state, replica_node_id=None),
            (RequestReplicaBuilder(), Log("warn", "the replica builder was lost", node)),
        )
    held = [r for r in state.current_ranges if r.node_id == node and r.status in _UNVALIDATED]
    if not held:
        return _unchanged(state, "the node held none of this job's unvalidated ranges")
    return _requeue(state, held, "the node was lost before the output was validated", policy)


def _crash_decided(state: JobState, ev: CrashDecided, policy: JobPolicy) -> Decision:
    r = state.range(ev.range_id)
    if r is None or r.node_id != ev.node_id or r.status not in _RUNNING:
        return _stale(state, f"range {ev.range_id} is not being rendered by this node", ev.node_id)
    verdict = ev.verdict
    if verdict.fail_job:
        failed = attrs.evolve(r, status=R.FAILED, last_error=verdict.reason)
        return _fail_job(_with(state, failed), verdict.reason)
    if verdict.requeue_range:
        return _requeue(state, [r], f"AfterFX crashed: {verdict.reason}", policy)
    return Decision(
        attrs.evolve(state, repair_attempts=state.repair_attempts + 1),
        (Log("warn", f"AfterFX crashed on {_frames(r)}: {verdict.reason}", ev.node_id),),
    )


def _trimmed_tail(state: JobState, ev: TrimmedTail) -> Decision:
    r = state.range(ev.range_id)
    if state.step is not J.RENDERING or r is None or r.status not in _RUNNING:
        return _ignored(state, f"range {ev.range_id} is not being rendered")
    if r.trim is not None:
        if r.trim.tail_id == ev.tail_range_id and r.end_frame == ev.new_end:
            return _unchanged(state, "the range was already trimmed so")
        return _ignored(state, f"{_frames(r)} was already trimmed once")
    if any(
        p.trim is not None and p.status in _RUNNING and p.end_frame + 1 == r.start_frame
        for p in state.current_ranges
    ):
        return _ignored(state, f"{_frames(r)} is a tail whose trim has not settled")
    if not r.start_frame <= ev.new_end < r.end_frame:
        return _ignored(state, f"end {ev.new_end} does not shorten {_frames(r)}")
    if any(f >= ev.new_end for f in r.reported_frames):
        return _ignored(state, f"the holder already rendered frame {ev.new_end}")
    if state.range(ev.tail_range_id) is not None:
        return _ignored(state, f"range {ev.tail_range_id} already exists")
    assert r.node_id is not None
    tail = RangeState(ev.tail_range_id, ev.new_end + 1, r.end_frame, attempt=r.attempt)
    trimmed = attrs.evolve(r, end_frame=ev.new_end, trim=Trim(r.end_frame, tail.id))
    return Decision(
        _with(state, trimmed, tail),
        (
            SendTrimRange(r.id, r.node_id, ev.new_end),
            QueueRange(tail),
            Log("info", f"{_frames(r)} trimmed: {_frames(tail)} go to another node", r.node_id),
        ),
    )


def _close(state: JobState, step: JobStep, why: str) -> tuple[JobState, list[Effect]]:
    """End the job: open ranges fail, nodes rendering them are told to stop, a merge aborts."""
    effects: list[Effect] = []
    closed: list[RangeState] = []
    for r in state.ranges:
        if r.status in (R.PENDING, *_UNVALIDATED):
            closed.append(attrs.evolve(r, status=R.FAILED, last_error=why))
            if r.node_id is not None and r.status in _RUNNING:
                effects.append(CancelRender(r.id, r.node_id))
    if state.step is J.MERGING:
        effects.append(AbortMerge())
    return attrs.evolve(_with(state, *closed), step=step, replica_node_id=None), effects


def _fail_job(state: JobState, message: str) -> Decision:
    new, effects = _close(state, J.FAILED, "the job failed")
    if state.paid_minor > 0:
        effects.append(RefundFull(state.paid_minor, message))
    effects += [FailSnapshot(message)] if state.snapshot else []
    effects.append(Log("error", f"the job failed: {message}"))
    return Decision(attrs.evolve(new, failed_message=message), tuple(effects))


def _cancel(state: JobState, reason: str) -> Decision:
    new, effects = _close(state, J.CANCELLED, "the job was cancelled")
    rendered = state.frames_validated
    refund = cancel_refund(state.paid_minor, state.total_frames, rendered)
    if refund > 0:
        effects.append(RefundCancelShare(refund, rendered, state.total_frames))
    effects += [FailSnapshot(f"cancelled: {reason}")] if state.snapshot else []
    effects.append(Log("info", f"the job was cancelled: {reason}"))
    return Decision(new, tuple(effects))
