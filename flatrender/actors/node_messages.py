"""The messages a NodeActor receives and the answers it gives (see ``actors/node.py``)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Any
from uuid import UUID

import attrs

from flatrender.actors.mailbox import Reply
from flatrender.domain import node_status as ns
from flatrender.domain.crash_policy import CrashVerdict
from flatrender.domain.model import CommandType, CrashAction, HealthSample, NodeCommand
from flatrender.persistence import nodes


@attrs.frozen
class Heartbeat:
    sample: HealthSample
    acked: tuple[UUID, ...]
    reply: Reply  # -> HeartbeatAnswer


@attrs.frozen
class HeartbeatAnswer:
    next_heartbeat_in_sec: int
    commands: tuple[NodeCommand, ...]


@attrs.frozen
class Online:
    info: nodes.OnlineInfo
    reply: Reply  # -> None


@attrs.frozen
class CacheChanged:
    action: str  # Downloaded | Verified | Evicted | Failed
    md5: str
    cache_used_gb: int | None  # None: unchanged
    reply: Reply  # -> None


@attrs.frozen
class Enqueue:
    type: CommandType
    payload: dict[str, object]
    reply: Reply  # -> NodeCommand; NodeNotIdle (raised by the caller) for an update to a busy node


@attrs.frozen
class Assign:
    """Give the node a piece of work (a range, or a replica to build) with its command.

    Refused with NodeNotIdle unless the node is schedulable; the command and the node's Busy
    status are committed together.
    """

    work_id: UUID
    type: CommandType
    payload: dict[str, object]
    reply: Reply  # -> NodeCommand
    # When (trio time) the work became ready to hand out: its dispatch latency ends when the
    # command first leaves in a heartbeat answer.
    ready_at: float | None = None


@attrs.frozen
class Unassign:
    """A piece of work left the node: finished (``succeeded``), moved, or cancelled."""

    work_id: UUID
    succeeded: bool
    reply: Reply  # -> None


@attrs.frozen
class CrashPolicyQuery:
    """Decide the crash of a range from the node's crash history, read in the transaction
    that records the crash: ``decide(crashes since `since`, crashes on the range)`` is pure."""

    range_id: UUID
    since: datetime
    decide: Callable[[int, int], CrashVerdict]
    # The job's decision on the verdict, written in the same transaction (its result comes
    # back as ``CrashOutcome.joined``): the crash, the node's state and the job's decision
    # commit together. Database calls and pure decisions only (it runs on the asyncio side).
    then: Callable[[Any, CrashVerdict], Awaitable[object]] | None = None


@attrs.frozen
class RecordCrash:
    report: nodes.CrashReport
    reply: Reply  # -> CrashOutcome
    # The crash policy's answer, stored with the crash so a repeated report gets the same one;
    # with ``policy``, the answer it decides instead.
    action: CrashAction = CrashAction.REASSIGN_WORK
    policy: CrashPolicyQuery | None = None


@attrs.frozen
class CrashOutcome:
    crash: nodes.CrashRow
    counted: bool  # False: the same report was recorded before
    verdict: CrashVerdict | None = None  # the policy's, when one was asked and counted
    joined: object = None  # what the policy's ``then`` returned, when it ran


@attrs.frozen
class NodePatch:
    priority: int | None = None
    is_active: bool | None = None
    accepts_new_jobs: bool | None = None
    node_kind: str | None = None
    owner_user_id: object = ns.UNSET
    next_maintenance_at: object = ns.UNSET
    maintenance_reason: str | None = None


@attrs.frozen
class Patch:
    patch: NodePatch
    reply: Reply  # -> None


@attrs.frozen
class Inspect:
    reply: Reply  # -> NodeView


@attrs.frozen
class NodeView:
    state: ns.NodeState
    last_sample: HealthSample | None
    commands: tuple[NodeCommand, ...]


class NodeNotIdle(Exception):
    """Software updates go only to idle nodes."""


Message = (
    Heartbeat | Online | CacheChanged | Enqueue | Assign | Unassign | RecordCrash | Patch | Inspect
)
