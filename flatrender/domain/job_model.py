"""The events and effects of a render job and its frame ranges (DESIGN §3); their state is
in :mod:`flatrender.domain.job_state` (split off to keep each module under ~400 lines).

Job ``step``: ``Queued → Preparing`` (the replica must be built: ``ReplicaMissing``) or
``Queued → Rendering`` (it exists: ``ReplicaAvailable``); ``Preparing → Rendering`` on
``ReplicaBuilt``; ``Rendering → Merging`` when every current range is ``Validated``;
``Merging → Completed`` once the export is recorded; a snapshot's job skips Merging:
``Rendering → Completed`` when its one PNG is validated (``CacheSnapshot``). Any non-terminal
step goes to ``Failed`` (replica failure, a range past ``max_attempts``, merge failure,
``Abort``) with a full refund, or to ``Cancelled`` (user) with a refund of the frames not yet
validated; a snapshot's job then fails its snapshot (``FailSnapshot``).

Frame range (FrameJob) ``status``: ``Pending → Assigned`` (scheduler) ``→ Rendering`` (a frame
reported) ``→ Rendered`` (the last frame reported: the node uploaded the output) ``→ Validated``
(output probed OK), or ``Failed``. A range that fails before validation (bad output, node lost,
crash requeue) is replaced by a copy with ``attempt + 1`` and the same frames, whose id is
derived from the failed one (``job_state.replacement_id``), so deciding the same event twice gives
the same range; past ``max_attempts`` the job fails instead. "Current" ranges are the ones not
``Failed``; they always tile the job's frames.

The transitions themselves are :func:`flatrender.domain.job_steps.decide`.
"""

from __future__ import annotations

import enum
from typing import Literal
from uuid import UUID

import attrs

from flatrender.domain.crash_policy import CrashVerdict
from flatrender.domain.job_state import JobState, RangeState

# ------------------------------------------------------------------ events


@attrs.frozen
class ReplicaAvailable:
    """The replica of this project version exists; ``ranges`` are the planned Pending ranges."""

    replica_key: str
    ranges: tuple[RangeState, ...]


@attrs.frozen
class ReplicaMissing:
    """No replica yet: one node must build it."""


@attrs.frozen
class ReplicaBuilderAssigned:
    node_id: UUID


@attrs.frozen
class ReplicaBuilt:
    replica_key: str
    ranges: tuple[RangeState, ...]


@attrs.frozen
class ReplicaFailed:
    error: str


@attrs.frozen
class RangeAssigned:
    range_id: UUID
    node_id: UUID


@attrs.frozen
class FrameReported:
    range_id: UUID
    node_id: UUID
    frame: int


@attrs.frozen
class OutputValidated:
    range_id: UUID
    ok: bool
    error: str | None = None
    # The picture's size, for a snapshot's PNG.
    width: int | None = None
    height: int | None = None


@attrs.frozen
class NodeLost:
    """The node went Offline or restarted: its unvalidated frames died with it."""

    node_id: UUID


@attrs.frozen
class CrashDecided:
    """The crash policy's verdict on a crash the node ``node_id`` reported for the range."""

    range_id: UUID
    node_id: UUID
    verdict: CrashVerdict


@attrs.frozen
class TrimmedTail:
    """The range now ends at ``new_end``; ``tail_range_id`` (same attempt) takes the rest."""

    range_id: UUID
    new_end: int
    tail_range_id: UUID


@attrs.frozen
class CancelRequested:
    reason: str = "cancelled by the user"


@attrs.frozen
class ExportRecorded:
    export_id: UUID


@attrs.frozen
class MergeFailed:
    error: str


@attrs.frozen
class Abort:
    """Fail the job for a reason outside its ranges (its project vanished, an operator)."""

    message: str


JobEvent = (
    ReplicaAvailable
    | ReplicaMissing
    | ReplicaBuilderAssigned
    | ReplicaBuilt
    | ReplicaFailed
    | RangeAssigned
    | FrameReported
    | OutputValidated
    | NodeLost
    | CrashDecided
    | TrimmedTail
    | CancelRequested
    | ExportRecorded
    | MergeFailed
    | Abort
)

# ------------------------------------------------------------------ effects


@attrs.frozen
class RequestReplicaBuilder:
    """Pick a node to build the replica and answer with ``ReplicaBuilderAssigned``."""


@attrs.frozen
class SendPrepareReplica:
    node_id: UUID


@attrs.frozen
class SendRenderFrames:
    range_id: UUID
    node_id: UUID
    start_frame: int
    end_frame: int
    attempt: int


@attrs.frozen
class SendTrimRange:
    range_id: UUID
    node_id: UUID
    end_frame: int


@attrs.frozen
class CancelRender:
    range_id: UUID
    node_id: UUID


@attrs.frozen
class QueueRange:
    """A new Pending range (planned, or a trimmed tail): persist it, offer it to the scheduler."""

    range: RangeState


@attrs.frozen
class RequeueRange:
    failed_range_id: UUID
    replacement: RangeState


@attrs.frozen
class ValidateOutput:
    range_id: UUID
    node_id: UUID
    start_frame: int
    end_frame: int
    attempt: int


@attrs.frozen
class NodeSucceeded:
    """A range the node rendered was validated (its failure streak ends)."""

    node_id: UUID


@attrs.frozen
class StartMerge:
    range_ids: tuple[UUID, ...]  # in frame order


@attrs.frozen
class AbortMerge:
    pass


@attrs.frozen
class SnapshotRendering:
    """The snapshot this job renders is now ``Rendering``."""


@attrs.frozen
class CacheSnapshot:
    """The snapshot's image (and its thumbnail) are stored: it becomes ``Cached``, its image
    being the output of ``range_id`` (the validated attempt, never a superseded one)."""

    width: int
    height: int
    range_id: UUID


@attrs.frozen
class FailSnapshot:
    message: str


@attrs.frozen
class RefundFull:
    amount_minor: int
    reason: str


@attrs.frozen
class RefundCancelShare:
    amount_minor: int
    rendered_frames: int
    total_frames: int


LogLevel = Literal["debug", "info", "warn", "error"]


@attrs.frozen
class Log:
    """A line for the job's log (``job_logs``)."""

    level: LogLevel
    message: str
    node_id: UUID | None = None


Effect = (
    RequestReplicaBuilder
    | SendPrepareReplica
    | SendRenderFrames
    | SendTrimRange
    | CancelRender
    | QueueRange
    | RequeueRange
    | ValidateOutput
    | NodeSucceeded
    | StartMerge
    | AbortMerge
    | SnapshotRendering
    | CacheSnapshot
    | FailSnapshot
    | RefundFull
    | RefundCancelShare
    | Log
)


class Outcome(enum.Enum):
    APPLIED = "applied"  # the event was taken
    UNCHANGED = "unchanged"  # taken, nothing to do: a duplicate, a node holding nothing here
    # Lease fencing: the sender no longer holds this work (409 to a node). The state changes only
    # when a too-late trim makes the holder's range fail (it is requeued).
    STALE = "stale"
    IGNORED = "ignored"  # does not apply in this step (terminal job, out-of-order event)


@attrs.frozen
class Decision:
    state: JobState
    effects: tuple[Effect, ...] = ()
    outcome: Outcome = Outcome.APPLIED
    reason: str = ""

    @property
    def fenced(self) -> bool:
        """A node's report was refused: it must drop the work (409 ``stale_assignment``)."""
        return self.outcome in (Outcome.STALE, Outcome.IGNORED)
