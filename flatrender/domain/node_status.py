"""Node status transitions (DESIGN §3) as one pure function: ``decide(state, event, policy)``.

``Offline → Idle ⇄ Busy``, plus ``Maintenance`` (``next_maintenance_at`` reached, once the node
holds no work), ``Quarantined`` (``max_consecutive_failures`` reached; ``accepts_new_jobs`` false
until an admin sets it back) and ``Updating`` (a software update was sent). Holds are derived from
fields, not remembered in the status: a quarantined or due-for-maintenance node that dies and
comes back returns to its hold, never silently to ``Idle``.
"""

from __future__ import annotations

import math
from datetime import datetime

import attrs

from flatrender.domain.model import NodeStatus

S = NodeStatus


@attrs.frozen
class NodePolicy:
    heartbeat_interval_sec: int = 5
    busy_heartbeat_interval_sec: int = 1
    heartbeat_timeout_sec: float = 15.0
    max_consecutive_failures: int = 3
    # The heartbeat rate the daemon can answer comfortably; 0: unlimited (no shedding).
    max_heartbeats_per_sec: float = 0.0


@attrs.frozen
class NodeState:
    status: NodeStatus
    is_active: bool = True
    accepts_new_jobs: bool = True
    consecutive_failures: int = 0
    lifetime_crash_count: int = 0
    next_maintenance_at: datetime | None = None
    last_maintenance_at: datetime | None = None
    # The node reported work in hand (current_job_id) or holds assigned ranges.
    busy: bool = False

    def quarantined(self, policy: NodePolicy) -> bool:
        return (
            not self.accepts_new_jobs
            and self.consecutive_failures >= policy.max_consecutive_failures
        )

    def maintenance_due(self, now: datetime) -> bool:
        return self.next_maintenance_at is not None and self.next_maintenance_at <= now

    def schedulable(self, now: datetime) -> bool:
        """May receive new work: alive, idle, active, accepting, not due for maintenance."""
        return (
            self.status is S.IDLE
            and self.is_active
            and self.accepts_new_jobs
            and not self.maintenance_due(now)
        )


# ------------------------------------------------------------------ events


@attrs.frozen
class Heartbeat:
    now: datetime
    busy: bool


@attrs.frozen
class Online:
    """The agent (re)started: whatever it was rendering is gone."""

    now: datetime


@attrs.frozen
class DeadlineExpired:
    now: datetime


@attrs.frozen
class CrashCounted:
    now: datetime


@attrs.frozen
class WorkSucceeded:
    """A range the node rendered was validated: its failure streak ends."""


@attrs.frozen
class WorkAssigned:
    busy: bool


@attrs.frozen
class UpdateSent:
    now: datetime


_UNSET = object()


@attrs.frozen
class AdminPatch:
    now: datetime
    is_active: bool | None = None
    accepts_new_jobs: bool | None = None
    # _UNSET: unchanged; None: cleared; a datetime: set.
    next_maintenance_at: object = _UNSET


NodeEvent = (
    Heartbeat
    | Online
    | DeadlineExpired
    | CrashCounted
    | WorkSucceeded
    | WorkAssigned
    | UpdateSent
    | AdminPatch
)

# ------------------------------------------------------------------ effects


@attrs.frozen
class DropAssignments:
    """The node's ranges are lost (dead or restarted): their owners must requeue them."""

    reason: str


@attrs.frozen
class ReleaseStaleWork:
    """A node back from Offline still reports work that moved on: tell it to drop it."""


Effect = DropAssignments | ReleaseStaleWork


@attrs.frozen
class Decision:
    state: NodeState
    effects: tuple[Effect, ...] = ()

    def changed(self, before: NodeState) -> bool:
        return self.state != before


def resting_status(state: NodeState, now: datetime, busy: bool, policy: NodePolicy) -> NodeStatus:
    """Where a live node belongs, given its holds and whether it holds work."""
    if state.quarantined(policy):
        return S.QUARANTINED
    if busy:
        return S.BUSY
    if state.maintenance_due(now):
        return S.MAINTENANCE
    return S.IDLE


def decide(state: NodeState, event: NodeEvent, policy: NodePolicy) -> Decision:
    match event:
        case Heartbeat(now=now, busy=busy):
            return _heartbeat(state, now, busy, policy)
        case Online(now=now):
            effects: tuple[Effect, ...] = ()
            if state.status is not S.OFFLINE and state.busy:
                effects = (DropAssignments("node agent restarted"),)
            new = attrs.evolve(state, busy=False)
            return Decision(
                attrs.evolve(new, status=resting_status(new, now, False, policy)), effects
            )
        case DeadlineExpired():
            if state.status is S.OFFLINE:
                return Decision(state)
            return Decision(
                attrs.evolve(state, status=S.OFFLINE, busy=False),
                (DropAssignments("heartbeat timeout"),),
            )
        case CrashCounted(now=now):
            failures = state.consecutive_failures + 1
            new = attrs.evolve(
                state,
                consecutive_failures=failures,
                lifetime_crash_count=state.lifetime_crash_count + 1,
            )
            if failures >= policy.max_consecutive_failures:
                new = attrs.evolve(new, accepts_new_jobs=False)
                if new.status is not S.OFFLINE:
                    new = attrs.evolve(new, status=S.QUARANTINED)
            return Decision(new)
        case WorkSucceeded():
            return Decision(attrs.evolve(state, consecutive_failures=0))
        case WorkAssigned(busy=busy):
            new = attrs.evolve(state, busy=busy)
            if state.status in (S.IDLE, S.BUSY):
                new = attrs.evolve(new, status=S.BUSY if busy else S.IDLE)
            return Decision(new)
        case UpdateSent():
            if state.status is S.IDLE:
                return Decision(attrs.evolve(state, status=S.UPDATING))
            return Decision(state)
        case AdminPatch():
            return _admin_patch(state, event, policy)
    raise AssertionError(f"unhandled node event {event!r}")  # pragma: no cover


def _heartbeat(state: NodeState, now: datetime, busy: bool, policy: NodePolicy) -> Decision:
    if state.status is S.OFFLINE:
        # Its ranges were requeued when it went Offline: it comes back empty-handed.
        effects: tuple[Effect, ...] = (ReleaseStaleWork(),) if busy else ()
        back = attrs.evolve(state, busy=False)
        return Decision(
            attrs.evolve(back, status=resting_status(back, now, False, policy)), effects
        )
    if state.status in (S.IDLE, S.BUSY):
        # resting_status does not read `busy` from the state: the common heartbeat that changes
        # nothing keeps the very same state object (no copy).
        status = resting_status(state, now, busy, policy)
        if status is state.status and busy == state.busy:
            return Decision(state)
        return Decision(attrs.evolve(state, busy=busy, status=status))
    new = attrs.evolve(state, busy=busy)
    if state.status is S.MAINTENANCE and not state.maintenance_due(now):
        return Decision(attrs.evolve(new, status=resting_status(new, now, busy, policy)))
    return Decision(new)


def _admin_patch(state: NodeState, patch: AdminPatch, policy: NodePolicy) -> Decision:
    new = state
    if patch.is_active is not None:
        new = attrs.evolve(new, is_active=patch.is_active)
    if patch.accepts_new_jobs is not None:
        new = attrs.evolve(new, accepts_new_jobs=patch.accepts_new_jobs)
        if patch.accepts_new_jobs and state.quarantined(policy):
            # An admin clearing a quarantine forgives the failure streak.
            new = attrs.evolve(new, consecutive_failures=0)
    if patch.next_maintenance_at is not _UNSET:
        assert patch.next_maintenance_at is None or isinstance(patch.next_maintenance_at, datetime)
        new = attrs.evolve(new, next_maintenance_at=patch.next_maintenance_at)
        if state.status is S.MAINTENANCE and not new.maintenance_due(patch.now):
            new = attrs.evolve(new, last_maintenance_at=patch.now)
    if new.status in (S.OFFLINE, S.UPDATING):
        return Decision(new)
    return Decision(attrs.evolve(new, status=resting_status(new, patch.now, new.busy, policy)))


def heartbeat_interval(
    state: NodeState,
    work_waiting: bool,
    policy: NodePolicy,
    fleet_size: int = 1,
    *,
    work_unacked: bool = False,
    handed_work_sec_ago: float | None = None,
    last_work_sec: float | None = None,
) -> int:
    """Seconds until this node's next heartbeat.

    Short (``busy_heartbeat_interval_sec``):
    - for a node just handed work, i.e. holding a work command it has not acknowledged yet:
      the answer delivering it asks the node back soon;
    - for a node on short work: its last piece of work took less than a regular interval
      (``last_work_sec``) and its current one began less than a regular interval ago
      (``handed_work_sec_ago``): it is likely free again before a regular beat, and its next
      command waits for its next call. A node on long ranges (or with no history) pays one
      short beat per piece of work, not one a second;
    - for an ``Idle`` node while work waits that it may take (``work_waiting`` is about this
      node, not the fleet).
    Otherwise the regular interval, longer when the whole fleet at the regular interval would
    exceed ``max_heartbeats_per_sec`` (load is shed by asking nodes to call less often, never
    by letting them time out).
    """
    regular = policy.heartbeat_interval_sec
    short_work = (
        handed_work_sec_ago is not None
        and last_work_sec is not None
        and handed_work_sec_ago < regular
        and last_work_sec < regular
    )
    if work_unacked or short_work or (work_waiting and state.status is S.IDLE):
        return policy.busy_heartbeat_interval_sec
    return shed_interval(regular, fleet_size, policy.max_heartbeats_per_sec)


def shed_interval(base: int, fleet_size: int, max_rate: float) -> int:
    """The shortest interval, at least ``base``, at which ``fleet_size`` nodes stay within
    ``max_rate`` heartbeats per second."""
    if max_rate <= 0:
        return base
    return max(base, math.ceil(fleet_size / max_rate))


def heartbeat_deadline(policy: NodePolicy, interval: int) -> float:
    """How long a node may stay silent after an answer that gave it ``interval``: the
    configured timeout, stretched to three intervals when load shedding lengthened them."""
    return max(policy.heartbeat_timeout_sec, 3.0 * interval)


UNSET = _UNSET
