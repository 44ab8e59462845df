"""The JobActor's messages: what callers send it, and what its background work sends back.

A message that expects an answer carries a one-shot ``reply``; the comment beside it says what is
answered. ``_Validated`` and ``_Merged`` come from the actor's own validation and merge tasks.
"""

from __future__ import annotations

from datetime import datetime
from uuid import UUID

import attrs

from flatrender.actors.mailbox import Reply
from flatrender.actors.merger import MergedExport
from flatrender.actors.validation import OutputCheck
from flatrender.domain.model import CrashAction
from flatrender.persistence import nodes


@attrs.frozen
class AssignRange:
    range_id: UUID
    node_id: UUID
    reply: Reply  # -> bool: the node took it


@attrs.frozen
class AssignRanges:
    """Several of this job's ranges, each to its node (a scheduling round's share of the job):
    the nodes are asked together and the ranges they took are committed in one transaction."""

    pairs: tuple[tuple[UUID, UUID], ...]  # (range_id, node_id)
    reply: Reply  # -> frozenset[UUID]: the ranges a node took


@attrs.frozen
class AssignReplica:
    node_id: UUID
    reply: Reply  # -> bool


@attrs.frozen
class ReportFrame:
    node_id: UUID
    range_id: UUID
    frame: int
    file_size_bytes: int | None
    completed_at: datetime | None
    reply: Reply  # -> bool: False means fenced (409 stale_assignment)


@attrs.frozen
class ReplicaReady:
    node_id: UUID
    replica_key: str
    replica_md5: str | None
    reply: Reply  # -> bool: False means fenced


@attrs.frozen
class CrashReported:
    report: nodes.CrashReport
    reply: Reply  # -> CrashAnswer, or None when fenced


@attrs.frozen
class CrashAnswer:
    action: CrashAction
    reassigned_to_node_id: UUID | None = None


@attrs.frozen
class NodeGone:
    node_id: UUID
    reply: Reply | None = None


@attrs.frozen
class WorkDropped:
    """The node is alive and idle but no longer has this range (or this job's replica build)."""

    node_id: UUID
    work_id: UUID
    reply: Reply | None = None


@attrs.frozen
class Cancel:
    reason: str
    reply: Reply  # -> int: refunded minor units


@attrs.frozen
class Abort:
    """Fail the job for a reason outside its ranges (a snapshot past its render deadline)."""

    message: str
    reply: Reply  # -> int: refunded minor units


@attrs.frozen
class OfferTail:
    """An idle node is free: give the unstarted tail of this job's longest range to it."""

    reply: Reply  # -> bool: a tail is now Pending


@attrs.frozen
class Inspect:
    reply: Reply  # -> js.JobState


@attrs.frozen
class _Validated:
    range_id: UUID
    check: OutputCheck
    reply: Reply | None = None


@attrs.frozen
class _Merged:
    export: MergedExport | None
    error: str | None
    reply: Reply | None = None


Message = (
    AssignRange
    | AssignRanges
    | AssignReplica
    | ReportFrame
    | ReplicaReady
    | CrashReported
    | NodeGone
    | WorkDropped
    | Cancel
    | Abort
    | OfferTail
    | Inspect
    | _Validated
    | _Merged
)
