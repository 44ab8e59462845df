"""A render job's state and its frame ranges' state: what ``job_steps.decide`` works on.

The lifecycle of steps and range statuses is described in :mod:`flatrender.domain.job_model`
(events and effects); the transitions are :func:`flatrender.domain.job_steps.decide`.
"""

from __future__ import annotations

import enum
from uuid import UUID, uuid5

import attrs


class JobStep(enum.Enum):
    QUEUED = "Queued"
    PREPARING = "Preparing"
    RENDERING = "Rendering"
    MERGING = "Merging"
    COMPLETED = "Completed"
    FAILED = "Failed"
    CANCELLED = "Cancelled"


class RangeStatus(enum.Enum):
    PENDING = "Pending"
    ASSIGNED = "Assigned"
    RENDERING = "Rendering"
    RENDERED = "Rendered"
    VALIDATED = "Validated"
    FAILED = "Failed"


TERMINAL_STEPS = frozenset({JobStep.COMPLETED, JobStep.FAILED, JobStep.CANCELLED})


@attrs.frozen
class Trim:
    """An unsettled trim: the range ended at ``original_end`` until ``tail_id`` took the rest."""

    original_end: int
    tail_id: UUID


@attrs.frozen
class RangeState:
    id: UUID
    start_frame: int
    end_frame: int
    status: RangeStatus = RangeStatus.PENDING
    node_id: UUID | None = None
    attempt: int = 1
    reported_frames: frozenset[int] = frozenset()
    last_error: str | None = None
    replaces_id: UUID | None = None
    trim: Trim | None = None

    @property
    def frame_count(self) -> int:
        return self.end_frame - self.start_frame + 1

    @property
    def frames_rendered(self) -> int:
        return len(self.reported_frames)

    @property
    def frames_validated(self) -> int:
        return self.frame_count if self.status is RangeStatus.VALIDATED else 0

    @property
    def order_value(self) -> int:
        """Merge order: current ranges tile the job, so their first frames order them."""
        return self.start_frame


@attrs.frozen
class JobState:
    job_id: UUID
    start_frame: int
    end_frame: int
    step: JobStep = JobStep.QUEUED
    paid_minor: int = 0
    ranges: tuple[RangeState, ...] = ()
    replica_key: str | None = None
    replica_node_id: UUID | None = None  # the node building the replica (Preparing)
    export_id: UUID | None = None
    failed_message: str | None = None
    repair_attempts: int = 0  # ResetAndRestart verdicts
    # A snapshot's job: its one validated PNG completes it (no merge) and caches the snapshot.
    snapshot: bool = False

    @property
    def terminal(self) -> bool:
        return self.step in TERMINAL_STEPS

    @property
    def total_frames(self) -> int:
        return self.end_frame - self.start_frame + 1

    @property
    def current_ranges(self) -> tuple[RangeState, ...]:
        return tuple(r for r in self.ranges if r.status is not RangeStatus.FAILED)

    @property
    def frames_validated(self) -> int:
        return sum(r.frames_validated for r in self.ranges)

    def range(self, range_id: UUID) -> RangeState | None:
        return next((r for r in self.ranges if r.id == range_id), None)


@attrs.frozen
class JobPolicy:
    max_attempts: int = 3


def replacement_id(failed_range_id: UUID) -> UUID:
    """The id of the range that replaces ``failed_range_id`` (a range fails at most once)."""
    return uuid5(failed_range_id, "replacement")
