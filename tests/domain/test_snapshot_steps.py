"""The snapshot edges of the job machine: one PNG frame, no merge, the snapshot follows the job."""

from typing import Any, TypeVar
from uuid import UUID

import pytest

from flatrender.domain.job_steps import (
    Abort,
    CacheSnapshot,
    CancelRequested,
    Decision,
    FailSnapshot,
    JobEvent,
    JobPolicy,
    JobState,
    JobStep,
    NodeSucceeded,
    OutputValidated,
    QueueRange,
    RangeState,
    RangeStatus,
    RefundFull,
    ReplicaAvailable,
    ReplicaBuilt,
    RequeueRange,
    SnapshotRendering,
    StartMerge,
    decide,
)

J = JobStep
R = RangeStatus
JOB = UUID(int=7)
NODE = UUID(int=101)
FRAME = 42
RANGE = UUID(int=1001)
KEY = "replicas/p/1.aep"
POLICY = JobPolicy(max_attempts=2)

E = TypeVar("E")


def snapshot_job(step: J = J.RENDERING, *ranges: RangeState, **kw: Any) -> JobState:
    return JobState(JOB, FRAME, FRAME, step, ranges=ranges, snapshot=True, **kw)


def the_range(status: R = R.RENDERED, **kw: Any) -> RangeState:
    return RangeState(RANGE, FRAME, FRAME, status, node_id=NODE, **kw)


def go(state: JobState, event: JobEvent) -> Decision:
    return decide(state, event, POLICY)


def effects_of(d: Decision, kind: type[E]) -> list[E]:
    return [e for e in d.effects if isinstance(e, kind)]


@pytest.mark.parametrize(
    ("step", "event"),
    [
        (J.QUEUED, ReplicaAvailable(KEY, (RangeState(RANGE, FRAME, FRAME),))),
        (J.PREPARING, ReplicaBuilt(KEY, (RangeState(RANGE, FRAME, FRAME),))),
    ],
)
def test_snapshot_to_rendering_marks_the_snapshot_rendering(step: J, event: JobEvent) -> None:
    d = go(snapshot_job(step), event)
    assert d.state.step is J.RENDERING
    assert effects_of(d, SnapshotRendering) == [SnapshotRendering()]
    assert len(effects_of(d, QueueRange)) == 1


def test_render_job_to_rendering_has_no_snapshot_effect() -> None:
    d = go(JobState(JOB, 0, 9), ReplicaAvailable(KEY, (RangeState(RANGE, 0, 9),)))
    assert effects_of(d, SnapshotRendering) == []


def test_rendering_to_completed_when_snapshot_frame_validated() -> None:
    d = go(snapshot_job(J.RENDERING, the_range()), OutputValidated(RANGE, True, None, 320, 180))
    assert d.state.step is J.COMPLETED
    validated = d.state.range(RANGE)
    assert validated is not None and validated.status is R.VALIDATED
    assert effects_of(d, CacheSnapshot) == [CacheSnapshot(320, 180, RANGE)]
    assert effects_of(d, NodeSucceeded) == [NodeSucceeded(NODE)]
    assert effects_of(d, StartMerge) == []  # no merge for a snapshot


def test_snapshot_cached_from_the_validated_attempt_not_a_superseded_one() -> None:
    first = the_range(R.FAILED, attempt=1)
    second = RangeState(UUID(int=1002), FRAME, FRAME, R.RENDERED, NODE, 2, replaces_id=RANGE)
    d = go(snapshot_job(J.RENDERING, first, second), OutputValidated(second.id, True, None, 8, 8))
    assert effects_of(d, CacheSnapshot) == [CacheSnapshot(8, 8, second.id)]


def test_snapshot_frame_invalid_requeues_and_does_not_cache() -> None:
    d = go(snapshot_job(J.RENDERING, the_range()), OutputValidated(RANGE, False, "not a PNG"))
    assert d.state.step is J.RENDERING
    assert len(effects_of(d, RequeueRange)) == 1
    assert effects_of(d, CacheSnapshot) == [] and effects_of(d, FailSnapshot) == []


def test_rendering_to_failed_when_snapshot_frame_fails_last_attempt_fails_snapshot() -> None:
    state = snapshot_job(J.RENDERING, the_range(attempt=2), paid_minor=5)
    d = go(state, OutputValidated(RANGE, False, "not a PNG"))
    assert d.state.step is J.FAILED
    assert effects_of(d, RefundFull) == [RefundFull(5, d.state.failed_message or "")]
    assert [type(e) for e in effects_of(d, FailSnapshot)] == [FailSnapshot]


def test_free_snapshot_failure_refunds_nothing_and_fails_snapshot() -> None:
    d = go(snapshot_job(J.QUEUED), Abort("the project vanished"))
    assert d.state.step is J.FAILED
    assert effects_of(d, RefundFull) == []
    assert effects_of(d, FailSnapshot) == [FailSnapshot("the project vanished")]


def test_snapshot_job_to_cancelled_fails_snapshot() -> None:
    d = go(snapshot_job(J.RENDERING, the_range(R.ASSIGNED)), CancelRequested("operator"))
    assert d.state.step is J.CANCELLED
    assert effects_of(d, FailSnapshot) == [FailSnapshot("cancelled: operator")]


def test_render_job_failure_has_no_snapshot_effect() -> None:
    d = go(JobState(JOB, 0, 9, J.RENDERING), Abort("x"))
    assert effects_of(d, FailSnapshot) == []
