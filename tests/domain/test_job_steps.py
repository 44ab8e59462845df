"""Every edge of the job step machine and the frame range machine (DESIGN §3), without I/O."""

from typing import Any, TypeVar
from uuid import UUID

import attrs
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from flatrender.domain.crash_policy import CrashHistory, CrashVerdict, decide_crash
from flatrender.domain.job_steps import (
    Abort,
    AbortMerge,
    CancelRender,
    CancelRequested,
    CrashDecided,
    Decision,
    ExportRecorded,
    FrameReported,
    JobEvent,
    JobPolicy,
    JobState,
    JobStep,
    Log,
    MergeFailed,
    NodeLost,
    NodeSucceeded,
    Outcome,
    OutputValidated,
    QueueRange,
    RangeAssigned,
    RangeState,
    RangeStatus,
    RefundCancelShare,
    RefundFull,
    ReplicaAvailable,
    ReplicaBuilderAssigned,
    ReplicaBuilt,
    ReplicaFailed,
    ReplicaMissing,
    RequestReplicaBuilder,
    RequeueRange,
    SendPrepareReplica,
    SendRenderFrames,
    SendTrimRange,
    StartMerge,
    Trim,
    TrimmedTail,
    ValidateOutput,
    decide,
    replacement_id,
)
from flatrender.domain.model import CrashAction

J = JobStep
R = RangeStatus
JOB = UUID(int=1)
N1 = UUID(int=101)
N2 = UUID(int=102)
N3 = UUID(int=103)
POLICY = JobPolicy(max_attempts=3)
KEY = "replicas/p/1.aep"


def rid(i: int) -> UUID:
    return UUID(int=1000 + i)


def rng(i: int, start: int, end: int, status: R = R.PENDING, **kw: Any) -> RangeState:
    return RangeState(rid(i), start, end, status, **kw)


def held(i: int, start: int, end: int, status: R, node: UUID = N1, **kw: Any) -> RangeState:
    return rng(i, start, end, status, node_id=node, **kw)


def plan() -> tuple[RangeState, ...]:
    return (rng(1, 0, 49), rng(2, 50, 99))


def job(step: J = J.RENDERING, *ranges: RangeState, **kw: Any) -> JobState:
    return JobState(JOB, 0, 99, step, paid_minor=1000, ranges=ranges, replica_key=KEY, **kw)


def go(state: JobState, event: JobEvent) -> Decision:
    return decide(state, event, POLICY)


E = TypeVar("E")


def effects_of(d: Decision, kind: type[E]) -> list[E]:
    return [e for e in d.effects if isinstance(e, kind)]


def status(d: Decision, i: int) -> R:
    r = d.state.range(rid(i))
    assert r is not None
    return r.status


# ------------------------------------------------------------------ Queued / Preparing


def test_queued_to_rendering_when_replica_available() -> None:
    d = go(JobState(JOB, 0, 99), ReplicaAvailable(KEY, plan()))
    assert d.state.step is J.RENDERING and d.state.replica_key == KEY
    assert d.state.ranges == plan()
    assert effects_of(d, QueueRange) == [QueueRange(r) for r in plan()]


def test_queued_to_preparing_when_replica_missing() -> None:
    d = go(JobState(JOB, 0, 99), ReplicaMissing())
    assert d.state.step is J.PREPARING
    assert effects_of(d, RequestReplicaBuilder) == [RequestReplicaBuilder()]


def test_preparing_sends_prepare_replica_to_assigned_builder() -> None:
    d = go(job(J.PREPARING), ReplicaBuilderAssigned(N1))
    assert d.state.replica_node_id == N1
    assert effects_of(d, SendPrepareReplica) == [SendPrepareReplica(N1)]


def test_preparing_builder_assigned_twice_is_unchanged() -> None:
    state = job(J.PREPARING, replica_node_id=N1)
    d = go(state, ReplicaBuilderAssigned(N1))
    assert d.outcome is Outcome.UNCHANGED and d.state == state and d.effects == ()


def test_preparing_second_builder_is_ignored_while_one_builds() -> None:
    d = go(job(J.PREPARING, replica_node_id=N1), ReplicaBuilderAssigned(N2))
    assert d.outcome is Outcome.IGNORED and d.state.replica_node_id == N1


def test_preparing_to_rendering_when_replica_built() -> None:
    d = go(job(J.PREPARING, replica_node_id=N1), ReplicaBuilt("replicas/p/2.aep", plan()))
    assert d.state.step is J.RENDERING
    assert d.state.replica_key == "replicas/p/2.aep" and d.state.replica_node_id is None
    assert len(effects_of(d, QueueRange)) == 2


def test_preparing_to_rendering_when_replica_available_from_another_job() -> None:
    d = go(job(J.PREPARING, replica_node_id=N1), ReplicaAvailable(KEY, plan()))
    assert d.state.step is J.RENDERING


def test_preparing_to_failed_when_replica_failed_refunds_in_full() -> None:
    d = go(job(J.PREPARING), ReplicaFailed("JSX error"))
    assert d.state.step is J.FAILED
    assert d.state.failed_message is not None and "JSX error" in d.state.failed_message
    assert effects_of(d, RefundFull) == [RefundFull(1000, d.state.failed_message)]


def test_preparing_lost_builder_requests_another() -> None:
    d = go(job(J.PREPARING, replica_node_id=N1), NodeLost(N1))
    assert d.state.step is J.PREPARING and d.state.replica_node_id is None
    assert effects_of(d, RequestReplicaBuilder) == [RequestReplicaBuilder()]


def test_preparing_other_node_lost_is_unchanged() -> None:
    d = go(job(J.PREPARING, replica_node_id=N1), NodeLost(N2))
    assert d.outcome is Outcome.UNCHANGED


@pytest.mark.parametrize("step", [J.RENDERING, J.MERGING])
def test_replica_reported_again_after_preparing_is_unchanged(step: J) -> None:
    state = job(step, *plan())
    assert go(state, ReplicaBuilt(KEY, plan())).outcome is Outcome.UNCHANGED
    assert go(state, ReplicaAvailable(KEY, plan())).outcome is Outcome.UNCHANGED


@pytest.mark.parametrize(
    ("step", "event"),
    [
        (J.PREPARING, ReplicaMissing()),
        (J.RENDERING, ReplicaMissing()),
        (J.QUEUED, ReplicaBuilt(KEY, ())),
        (J.QUEUED, ReplicaBuilderAssigned(N1)),
        (J.RENDERING, ReplicaBuilderAssigned(N1)),
        (J.QUEUED, ReplicaFailed("x")),
        (J.RENDERING, ReplicaFailed("x")),
        (J.RENDERING, ExportRecorded(UUID(int=7))),
        (J.RENDERING, MergeFailed("x")),
        (J.QUEUED, TrimmedTail(rid(1), 10, rid(9))),
        (J.QUEUED, RangeAssigned(rid(1), N1)),
    ],
)
def test_event_out_of_step_is_ignored_and_logged(step: J, event: JobEvent) -> None:
    state = job(step, *plan()) if step is J.RENDERING else job(step)
    d = go(state, event)
    assert d.outcome is Outcome.IGNORED and d.state == state and d.fenced
    assert [type(e) for e in d.effects] == [Log]


@pytest.mark.parametrize(
    "ranges",
    [
        (rng(1, 0, 49),),  # short
        (rng(1, 0, 49), rng(2, 51, 99)),  # gap
        (rng(1, 0, 50), rng(2, 50, 99)),  # overlap
        (rng(1, 1, 99),),  # wrong start
        (rng(1, 0, 49), rng(1, 50, 99)),  # duplicate id
        (rng(1, 0, 49, R.ASSIGNED), rng(2, 50, 99)),  # not fresh
        (),
    ],
)
def test_planned_ranges_must_tile_the_job(ranges: tuple[RangeState, ...]) -> None:
    with pytest.raises(ValueError):
        go(JobState(JOB, 0, 99), ReplicaAvailable(KEY, ranges))


# ------------------------------------------------------------------ Pending → Assigned


def test_pending_to_assigned_when_range_assigned_sends_render_frames() -> None:
    d = go(job(J.RENDERING, *plan()), RangeAssigned(rid(1), N1))
    assert status(d, 1) is R.ASSIGNED and d.state.ranges[0].node_id == N1
    assert effects_of(d, SendRenderFrames) == [SendRenderFrames(rid(1), N1, 0, 49, 1)]


def test_range_assigned_twice_to_same_node_is_unchanged() -> None:
    state = job(J.RENDERING, held(1, 0, 49, R.ASSIGNED), rng(2, 50, 99))
    assert go(state, RangeAssigned(rid(1), N1)).outcome is Outcome.UNCHANGED


def test_range_assigned_when_not_pending_is_stale() -> None:
    state = job(J.RENDERING, held(1, 0, 49, R.RENDERING), rng(2, 50, 99))
    d = go(state, RangeAssigned(rid(1), N2))
    assert d.outcome is Outcome.STALE and d.state == state


def test_unknown_range_assigned_is_ignored() -> None:
    assert go(job(J.RENDERING, *plan()), RangeAssigned(rid(9), N1)).outcome is Outcome.IGNORED


# ------------------------------------------------------------------ frame reports


def test_assigned_to_rendering_when_first_frame_reported() -> None:
    state = job(J.RENDERING, held(1, 0, 49, R.ASSIGNED), rng(2, 50, 99))
    d = go(state, FrameReported(rid(1), N1, 0))
    assert status(d, 1) is R.RENDERING and d.state.ranges[0].frames_rendered == 1
    assert d.outcome is Outcome.APPLIED and not d.fenced


def test_rendering_to_rendered_when_last_frame_reported_validates_output() -> None:
    state = job(J.RENDERING, held(1, 0, 49, R.RENDERING, reported_frames=frozenset({0})))
    d = go(state, FrameReported(rid(1), N1, 49))
    assert status(d, 1) is R.RENDERED
    assert effects_of(d, ValidateOutput) == [ValidateOutput(rid(1), N1, 0, 49, 1)]


def test_assigned_to_rendered_when_only_frame_of_single_frame_range_reported() -> None:
    state = JobState(JOB, 7, 7, J.RENDERING, ranges=(held(1, 7, 7, R.ASSIGNED),))
    d = go(state, FrameReported(rid(1), N1, 7))
    assert status(d, 1) is R.RENDERED and len(effects_of(d, ValidateOutput)) == 1


@pytest.mark.parametrize("st_", [R.RENDERING, R.RENDERED, R.VALIDATED])
def test_duplicate_frame_report_is_unchanged(st_: R) -> None:
    state = job(J.RENDERING, held(1, 0, 49, st_, reported_frames=frozenset({3, 49})))
    d = go(state, FrameReported(rid(1), N1, 3))
    assert d.outcome is Outcome.UNCHANGED and d.state == state and not d.fenced


def test_frame_report_from_node_not_holding_range_is_stale() -> None:
    state = job(J.RENDERING, held(1, 0, 49, R.RENDERING, node=N2))
    d = go(state, FrameReported(rid(1), N1, 5))
    assert d.outcome is Outcome.STALE and d.fenced and d.state == state


def test_frame_report_for_unknown_range_is_stale() -> None:
    assert go(job(J.RENDERING, *plan()), FrameReported(rid(9), N1, 5)).outcome is Outcome.STALE


def test_frame_report_for_pending_range_is_stale() -> None:
    assert go(job(J.RENDERING, *plan()), FrameReported(rid(1), N1, 5)).outcome is Outcome.STALE


def test_frame_report_for_failed_range_is_stale_even_if_a_duplicate() -> None:
    state = job(J.RENDERING, held(1, 0, 49, R.FAILED, reported_frames=frozenset({3})))
    assert go(state, FrameReported(rid(1), N1, 3)).outcome is Outcome.STALE


def test_new_frame_for_rendered_range_is_stale() -> None:
    state = job(J.RENDERING, held(1, 0, 49, R.RENDERED, reported_frames=frozenset({49})))
    assert go(state, FrameReported(rid(1), N1, 10)).outcome is Outcome.STALE


@pytest.mark.parametrize("frame", [-1, 50, 200])
def test_frame_outside_range_is_stale(frame: int) -> None:
    state = job(J.RENDERING, held(1, 0, 49, R.RENDERING))
    assert go(state, FrameReported(rid(1), N1, frame)).outcome is Outcome.STALE


# ------------------------------------------------------------------ validation


def test_rendered_to_validated_when_output_ok_credits_node() -> None:
    state = job(J.RENDERING, held(1, 0, 49, R.RENDERED), held(2, 50, 99, R.RENDERING, N2))
    d = go(state, OutputValidated(rid(1), ok=True))
    assert status(d, 1) is R.VALIDATED and d.state.step is J.RENDERING
    assert effects_of(d, NodeSucceeded) == [NodeSucceeded(N1)]
    assert d.state.frames_validated == 50


def test_rendering_to_merging_when_last_range_validated() -> None:
    state = job(J.RENDERING, held(2, 50, 99, R.VALIDATED, N2), held(1, 0, 49, R.RENDERED))
    d = go(state, OutputValidated(rid(1), ok=True))
    assert d.state.step is J.MERGING
    assert effects_of(d, StartMerge) == [StartMerge((rid(1), rid(2)))]  # frame order


def test_merge_skips_failed_ranges_and_uses_replacements() -> None:
    state = job(
        J.RENDERING,
        held(1, 0, 49, R.FAILED),
        held(2, 50, 99, R.VALIDATED, N2),
        held(3, 0, 49, R.RENDERED, attempt=2),
    )
    d = go(state, OutputValidated(rid(3), ok=True))
    assert effects_of(d, StartMerge) == [StartMerge((rid(3), rid(2)))]


def test_rendered_to_failed_when_output_invalid_requeues_next_attempt() -> None:
    state = job(J.RENDERING, held(1, 0, 49, R.RENDERED), rng(2, 50, 99))
    d = go(state, OutputValidated(rid(1), ok=False, error="12 frames, expected 50"))
    failed = d.state.range(rid(1))
    assert failed is not None and failed.status is R.FAILED
    assert failed.last_error is not None and "12 frames" in failed.last_error
    new = d.state.range(replacement_id(rid(1)))
    assert new == RangeState(replacement_id(rid(1)), 0, 49, attempt=2, replaces_id=rid(1))
    assert effects_of(d, RequeueRange) == [RequeueRange(rid(1), new)]
    assert d.state.step is J.RENDERING


def test_rendering_to_failed_when_output_invalid_on_last_attempt() -> None:
    state = job(
        J.RENDERING, held(1, 0, 49, R.RENDERED, attempt=3), held(2, 50, 99, R.RENDERING, N2)
    )
    d = go(state, OutputValidated(rid(1), ok=False, error="truncated"))
    assert d.state.step is J.FAILED
    assert d.state.failed_message is not None and "3 attempts" in d.state.failed_message
    assert effects_of(d, RequeueRange) == []
    assert effects_of(d, CancelRender) == [CancelRender(rid(2), N2)]
    assert effects_of(d, RefundFull) == [RefundFull(1000, d.state.failed_message)]
    assert all(r.status is R.FAILED for r in d.state.ranges)


def test_output_validated_twice_is_unchanged() -> None:
    state = job(J.MERGING, held(1, 0, 99, R.VALIDATED))
    assert go(state, OutputValidated(rid(1), ok=True)).outcome is Outcome.UNCHANGED


@pytest.mark.parametrize("st_", [R.PENDING, R.RENDERING, R.FAILED])
def test_output_validated_for_range_not_rendered_is_ignored(st_: R) -> None:
    state = job(J.RENDERING, held(1, 0, 99, st_))
    assert go(state, OutputValidated(rid(1), ok=True)).outcome is Outcome.IGNORED


# ------------------------------------------------------------------ node lost


def test_unvalidated_ranges_to_failed_when_node_lost_requeued_whole() -> None:
    state = JobState(
        JOB,
        0,
        199,
        J.RENDERING,
        ranges=(
            held(1, 0, 49, R.ASSIGNED),
            held(2, 50, 99, R.RENDERING, reported_frames=frozenset({50, 51})),
            held(3, 100, 149, R.RENDERED),
            held(4, 150, 199, R.VALIDATED),
        ),
    )
    d = go(state, NodeLost(N1))
    assert [status(d, i) for i in (1, 2, 3, 4)] == [R.FAILED] * 3 + [R.VALIDATED]
    requeued = effects_of(d, RequeueRange)
    assert [(e.failed_range_id, e.replacement.attempt) for e in requeued] == [
        (rid(1), 2),
        (rid(2), 2),
        (rid(3), 2),
    ]
    assert effects_of(d, CancelRender) == []  # the node is gone
    assert sum(r.frame_count for r in d.state.current_ranges) == 200


def test_node_lost_holding_nothing_is_unchanged() -> None:
    state = job(J.RENDERING, held(1, 0, 99, R.RENDERING, N2))
    assert go(state, NodeLost(N1)).outcome is Outcome.UNCHANGED


def test_rendering_to_failed_when_lost_node_held_range_on_last_attempt() -> None:
    state = job(
        J.RENDERING, held(1, 0, 49, R.RENDERING, attempt=2), held(2, 50, 99, R.ASSIGNED, attempt=3)
    )
    d = go(state, NodeLost(N1))
    assert d.state.step is J.FAILED
    assert effects_of(d, RequeueRange) == [] and len(effects_of(d, RefundFull)) == 1


# ------------------------------------------------------------------ crashes


def crash(attempt: int, on_node: int, node_crashes: int = 0) -> CrashVerdict:
    return decide_crash(
        CrashHistory(node_crashes, on_node, attempt), max_attempts=3, node_restart_after=3
    )


def test_crash_reset_and_restart_keeps_range_and_counts_repair() -> None:
    state = job(J.RENDERING, held(1, 0, 99, R.RENDERING))
    d = go(state, CrashDecided(rid(1), N1, crash(1, 0)))
    assert d.state.ranges == state.ranges and d.state.repair_attempts == 1
    assert [type(e) for e in d.effects] == [Log]


def test_rendering_to_failed_range_when_crash_verdict_requeues() -> None:
    state = job(J.RENDERING, held(1, 0, 99, R.RENDERING))
    d = go(state, CrashDecided(rid(1), N1, crash(1, 1)))
    assert status(d, 1) is R.FAILED
    assert [e.replacement.attempt for e in effects_of(d, RequeueRange)] == [2]


def test_rendering_to_failed_when_crash_verdict_fails_job() -> None:
    verdict = crash(3, 1)
    assert verdict.fail_job
    state = job(
        J.RENDERING, held(1, 0, 49, R.RENDERING, attempt=3), held(2, 50, 99, R.RENDERING, N2)
    )
    d = go(state, CrashDecided(rid(1), N1, verdict))
    assert d.state.step is J.FAILED and d.state.failed_message == verdict.reason
    assert effects_of(d, RefundFull) == [RefundFull(1000, verdict.reason)]
    assert effects_of(d, CancelRender) == [CancelRender(rid(2), N2)]  # not the crashed node


def test_requeue_verdict_past_policy_attempts_fails_job() -> None:
    verdict = CrashVerdict(CrashAction.REASSIGN_WORK, True, False, "repeat")
    state = job(J.RENDERING, held(1, 0, 99, R.RENDERING, attempt=3))
    assert go(state, CrashDecided(rid(1), N1, verdict)).state.step is J.FAILED


@pytest.mark.parametrize(
    "r", [held(1, 0, 99, R.RENDERING, N2), held(1, 0, 99, R.RENDERED), rng(1, 0, 99)]
)
def test_crash_for_range_not_rendered_by_node_is_stale(r: RangeState) -> None:
    d = go(job(J.RENDERING, r), CrashDecided(rid(1), N1, crash(1, 0)))
    assert d.outcome is Outcome.STALE and d.state.repair_attempts == 0


# ------------------------------------------------------------------ trimming


def trimmed_state(tail_status: R = R.PENDING, tail_node: UUID | None = None) -> JobState:
    holder = held(1, 0, 59, R.RENDERING, reported_frames=frozenset({0, 1}), trim=Trim(99, rid(2)))
    return job(J.RENDERING, holder, rng(2, 60, 99, tail_status, node_id=tail_node))


def test_rendering_range_trimmed_queues_tail_and_sends_trim() -> None:
    state = job(J.RENDERING, held(1, 0, 99, R.RENDERING, reported_frames=frozenset({0, 1})))
    d = go(state, TrimmedTail(rid(1), 59, rid(2)))
    assert d.state == trimmed_state()
    assert effects_of(d, SendTrimRange) == [SendTrimRange(rid(1), N1, 59)]
    assert effects_of(d, QueueRange) == [QueueRange(rng(2, 60, 99))]


def test_trim_reported_twice_is_unchanged() -> None:
    assert go(trimmed_state(), TrimmedTail(rid(1), 59, rid(2))).outcome is Outcome.UNCHANGED


def test_trim_of_already_trimmed_range_is_ignored() -> None:
    assert go(trimmed_state(), TrimmedTail(rid(1), 30, rid(3))).outcome is Outcome.IGNORED


def test_trim_of_tail_before_parent_trim_settled_is_ignored() -> None:
    state = trimmed_state(R.RENDERING, N2)
    assert go(state, TrimmedTail(rid(2), 80, rid(3))).outcome is Outcome.IGNORED


def test_trim_of_tail_after_parent_rendered_is_applied() -> None:
    state = trimmed_state(R.RENDERING, N2)
    state = go(state, FrameReported(rid(1), N1, 59)).state
    assert go(state, TrimmedTail(rid(2), 80, rid(3))).outcome is Outcome.APPLIED


@pytest.mark.parametrize("new_end", [1, 99, 120, -1])
def test_trim_not_after_holders_progress_or_not_shorter_is_ignored(new_end: int) -> None:
    state = job(J.RENDERING, held(1, 0, 99, R.RENDERING, reported_frames=frozenset({0, 1})))
    assert go(state, TrimmedTail(rid(1), new_end, rid(2))).outcome is Outcome.IGNORED


def test_trim_of_pending_range_is_ignored() -> None:
    assert go(job(J.RENDERING, *plan()), TrimmedTail(rid(1), 20, rid(3))).outcome is Outcome.IGNORED


def test_trim_with_existing_tail_id_is_ignored() -> None:
    state = job(J.RENDERING, held(1, 0, 49, R.RENDERING), rng(2, 50, 99))
    assert go(state, TrimmedTail(rid(1), 30, rid(2))).outcome is Outcome.IGNORED


def test_trimmed_holder_to_rendered_when_new_last_frame_reported() -> None:
    d = go(trimmed_state(), FrameReported(rid(1), N1, 59))
    assert status(d, 1) is R.RENDERED
    assert effects_of(d, ValidateOutput) == [ValidateOutput(rid(1), N1, 0, 59, 1)]


def test_trim_too_late_restores_range_and_withdraws_pending_tail() -> None:
    d = go(trimmed_state(), FrameReported(rid(1), N1, 60))
    holder = d.state.range(rid(1))
    assert holder is not None and (holder.end_frame, holder.trim) == (99, None)
    assert holder.status is R.RENDERING and 60 in holder.reported_frames
    assert status(d, 2) is R.FAILED and effects_of(d, CancelRender) == []
    assert d.outcome is Outcome.APPLIED


def test_trim_too_late_cancels_assigned_tail() -> None:
    d = go(trimmed_state(R.ASSIGNED, N2), FrameReported(rid(1), N1, 61))
    assert status(d, 2) is R.FAILED
    assert effects_of(d, CancelRender) == [CancelRender(rid(2), N2)]


def test_trim_too_late_with_original_last_frame_renders_whole_range() -> None:
    d = go(trimmed_state(), FrameReported(rid(1), N1, 99))
    assert status(d, 1) is R.RENDERED
    assert effects_of(d, ValidateOutput) == [ValidateOutput(rid(1), N1, 0, 99, 1)]


def test_trim_too_late_after_tail_rendered_refuses_holder_and_requeues_same_attempt() -> None:
    d = go(trimmed_state(R.VALIDATED, N2), FrameReported(rid(1), N1, 60))
    assert d.outcome is Outcome.STALE and d.fenced
    assert status(d, 1) is R.FAILED and status(d, 2) is R.VALIDATED
    (requeue,) = effects_of(d, RequeueRange)
    assert requeue == RequeueRange(
        rid(1), RangeState(replacement_id(rid(1)), 0, 59, attempt=1, replaces_id=rid(1))
    )


# ------------------------------------------------------------------ Merging and the ends


def test_merging_to_completed_when_export_recorded() -> None:
    export = UUID(int=77)
    d = go(job(J.MERGING, held(1, 0, 99, R.VALIDATED)), ExportRecorded(export))
    assert d.state.step is J.COMPLETED and d.state.export_id == export
    assert not effects_of(d, RefundFull)


def test_merging_to_failed_when_merge_failed() -> None:
    d = go(job(J.MERGING, held(1, 0, 99, R.VALIDATED)), MergeFailed("disk full"))
    assert d.state.step is J.FAILED
    assert effects_of(d, AbortMerge) == [AbortMerge()]
    assert effects_of(d, RefundFull) == [
        RefundFull(1000, "the segments could not be merged: disk full")
    ]


@pytest.mark.parametrize("step", [J.QUEUED, J.PREPARING, J.RENDERING, J.MERGING])
def test_non_terminal_to_failed_on_abort(step: J) -> None:
    d = go(job(step), Abort("project deleted"))
    assert d.state.step is J.FAILED and d.state.failed_message == "project deleted"
    assert effects_of(d, RefundFull) == [RefundFull(1000, "project deleted")]


def test_failed_job_that_paid_nothing_has_no_refund() -> None:
    d = go(attrs.evolve(job(J.QUEUED), paid_minor=0), Abort("x"))
    assert d.state.step is J.FAILED and not effects_of(d, RefundFull)


@pytest.mark.parametrize("step", [J.QUEUED, J.PREPARING])
def test_to_cancelled_before_rendering_refunds_in_full(step: J) -> None:
    d = go(job(step), CancelRequested())
    assert d.state.step is J.CANCELLED
    assert effects_of(d, RefundCancelShare) == [RefundCancelShare(1000, 0, 100)]


def test_rendering_to_cancelled_stops_nodes_and_refunds_unvalidated_share() -> None:
    state = JobState(
        JOB,
        0,
        99,
        J.RENDERING,
        paid_minor=1000,
        ranges=(
            held(1, 0, 24, R.VALIDATED),
            held(2, 25, 49, R.RENDERED),
            held(3, 50, 74, R.RENDERING, N2),
            rng(4, 75, 99),
        ),
    )
    d = go(state, CancelRequested())
    assert d.state.step is J.CANCELLED
    assert [status(d, i) for i in (1, 2, 3, 4)] == [R.VALIDATED] + [R.FAILED] * 3
    assert effects_of(d, CancelRender) == [CancelRender(rid(3), N2)]
    assert effects_of(d, RefundCancelShare) == [RefundCancelShare(750, 25, 100)]


def test_merging_to_cancelled_aborts_merge_and_refunds_nothing() -> None:
    d = go(job(J.MERGING, held(1, 0, 99, R.VALIDATED)), CancelRequested())
    assert d.state.step is J.CANCELLED
    assert effects_of(d, AbortMerge) == [AbortMerge()]
    assert not effects_of(d, RefundCancelShare)


ALL_EVENTS: list[JobEvent] = [
    ReplicaAvailable(KEY, plan()),
    ReplicaMissing(),
    ReplicaBuilderAssigned(N1),
    ReplicaBuilt(KEY, plan()),
    ReplicaFailed("x"),
    RangeAssigned(rid(1), N1),
    FrameReported(rid(1), N1, 0),
    OutputValidated(rid(1), ok=True),
    NodeLost(N1),
    CrashDecided(rid(1), N1, CrashVerdict(CrashAction.RESET_AND_RESTART, False, False, "r")),
    TrimmedTail(rid(1), 10, rid(9)),
    CancelRequested(),
    ExportRecorded(UUID(int=7)),
    MergeFailed("x"),
    Abort("x"),
]


@pytest.mark.parametrize("step", [J.COMPLETED, J.FAILED, J.CANCELLED])
@pytest.mark.parametrize("event", ALL_EVENTS, ids=lambda e: type(e).__name__)
def test_terminal_job_ignores_every_event(step: J, event: JobEvent) -> None:
    state = job(step, held(1, 0, 99, R.RENDERING))
    d = go(state, event)
    assert d.outcome is Outcome.IGNORED and d.state == state and d.fenced
    assert [type(e) for e in d.effects] == [Log]


# ------------------------------------------------------------------ whole lives


def test_happy_path_queued_to_completed() -> None:
    s = JobState(JOB, 0, 99, paid_minor=500)
    s = go(s, ReplicaMissing()).state
    s = go(s, ReplicaBuilderAssigned(N3)).state
    s = go(s, ReplicaBuilt(KEY, plan())).state
    for i, node in ((1, N1), (2, N2)):
        s = go(s, RangeAssigned(rid(i), node)).state
    r1, r2 = s.ranges
    for r, node in ((r1, N1), (r2, N2)):
        for f in range(r.start_frame, r.end_frame + 1):
            s = go(s, FrameReported(r.id, node, f)).state
        s = go(s, OutputValidated(r.id, ok=True)).state
    assert s.step is J.MERGING and s.frames_validated == 100
    assert go(s, ExportRecorded(UUID(int=7))).state.step is J.COMPLETED


def test_requeued_range_is_assigned_and_validated_like_any() -> None:
    s = go(job(J.RENDERING, held(1, 0, 99, R.RENDERING)), NodeLost(N1)).state
    new = replacement_id(rid(1))
    s = go(s, RangeAssigned(new, N2)).state
    s = go(s, FrameReported(new, N2, 99)).state
    assert go(s, FrameReported(rid(1), N1, 5)).outcome is Outcome.STALE  # the old lease
    assert go(s, OutputValidated(new, ok=True)).state.step is J.MERGING


_EVENT_FACTORIES = st.one_of(
    st.builds(
        RangeAssigned,
        st.sampled_from([rid(1), rid(2), replacement_id(rid(1))]),
        st.sampled_from([N1, N2]),
    ),
    st.builds(
        FrameReported,
        st.sampled_from([rid(1), rid(2), replacement_id(rid(1)), replacement_id(rid(2))]),
        st.sampled_from([N1, N2]),
        st.integers(min_value=0, max_value=99),
    ),
    st.builds(OutputValidated, st.sampled_from([rid(1), rid(2)]), st.booleans()),
    st.builds(NodeLost, st.sampled_from([N1, N2])),
    st.builds(TrimmedTail, st.sampled_from([rid(1), rid(2)]), st.integers(0, 99), st.just(rid(3))),
    st.just(CancelRequested()),
)


@settings(max_examples=150, deadline=None)
@given(st.lists(_EVENT_FACTORIES, max_size=40))
def test_any_event_sequence_keeps_ranges_tiling_and_refunds_once(events: list[JobEvent]) -> None:
    s = JobState(JOB, 0, 99, paid_minor=1000)
    s = go(s, ReplicaAvailable(KEY, plan())).state
    refunds = 0
    for event in events:
        d = go(s, event)
        refunds += len(effects_of(d, RefundFull)) + len(effects_of(d, RefundCancelShare))
        s = d.state
        if s.terminal:
            continue
        frames = sorted((r.start_frame, r.end_frame) for r in s.current_ranges)
        assert frames[0][0] == 0 and frames[-1][1] == 99
        assert all(b[0] == a[1] + 1 for a, b in zip(frames, frames[1:], strict=False))
    assert refunds <= 1
