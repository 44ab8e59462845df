"""Small pieces every branch of ``job_steps.decide`` uses: the non-applied outcomes, range
bookkeeping and the check of a planned split (split off ``job_steps`` to keep it small)."""

from __future__ import annotations

from collections.abc import Iterable
from uuid import UUID

import attrs

from flatrender.domain.job_model import Decision, Log, Outcome
from flatrender.domain.job_state import JobState, RangeState, RangeStatus

R = RangeStatus
RUNNING = (R.ASSIGNED, R.RENDERING)  # a node holds the range and renders it
UNVALIDATED = (R.ASSIGNED, R.RENDERING, R.RENDERED)  # a node holds frames not yet validated


def ignored(state: JobState, reason: str) -> Decision:
    return Decision(state, (Log("warn", reason),), Outcome.IGNORED, reason)


def unchanged(state: JobState, reason: str) -> Decision:
    return Decision(state, (), Outcome.UNCHANGED, reason)


def stale(state: JobState, reason: str, node: UUID) -> Decision:
    return Decision(
        state, (Log("info", f"stale report refused: {reason}", node),), Outcome.STALE, reason
    )


def frames_of(r: RangeState) -> str:
    return f"frames {r.start_frame}-{r.end_frame}"


def with_ranges(state: JobState, *changed: RangeState) -> JobState:
    """``state`` with the ranges of the same ids replaced and any new ones appended."""
    by_id = {r.id: r for r in changed}
    kept = tuple(by_id.pop(r.id, r) for r in state.ranges)
    return attrs.evolve(state, ranges=kept + tuple(by_id.values()))


def check_plan(state: JobState, ranges: Iterable[RangeState]) -> None:
    expected = state.start_frame
    ids: set[UUID] = set()
    for r in sorted(ranges, key=lambda r: r.start_frame):
        if r.start_frame != expected or r.end_frame < r.start_frame:
            raise ValueError(
                f"planned ranges do not tile frames {state.start_frame}-{state.end_frame}"
            )
        if r.status is not R.PENDING or r.node_id is not None or r.id in ids:
            raise ValueError(f"planned range {r.id} is not a fresh Pending range")
        ids.add(r.id)
        expected = r.end_frame + 1
    if expected != state.end_frame + 1:
        raise ValueError(f"planned ranges do not tile frames {state.start_frame}-{state.end_frame}")
