"""Every edge of the node status machine (DESIGN §3), without I/O."""

from datetime import UTC, datetime, timedelta

import pytest

from flatrender.domain.model import NodeStatus as S
from flatrender.domain.node_status import (
    AdminPatch,
    CrashCounted,
    DeadlineExpired,
    DropAssignments,
    Heartbeat,
    NodePolicy,
    NodeState,
    Online,
    ReleaseStaleWork,
    UpdateSent,
    WorkAssigned,
    WorkSucceeded,
    decide,
    heartbeat_deadline,
    heartbeat_interval,
)

NOW = datetime(2026, 11, 29, 12, 0, tzinfo=UTC)
POLICY = NodePolicy(max_consecutive_failures=3)


def state(status: S, **kw: object) -> NodeState:
    return NodeState(status=status, **kw)  # type: ignore[arg-type]


def test_offline_to_idle_on_online() -> None:
    d = decide(state(S.OFFLINE), Online(NOW), POLICY)
    assert d.state.status is S.IDLE and d.effects == ()


def test_offline_to_idle_on_late_heartbeat_without_work() -> None:
    d = decide(state(S.OFFLINE), Heartbeat(NOW, busy=False), POLICY)
    assert d.state.status is S.IDLE and d.effects == ()


def test_offline_to_idle_on_late_heartbeat_with_stale_work_releases_it() -> None:
    d = decide(state(S.OFFLINE), Heartbeat(NOW, busy=True), POLICY)
    assert d.state.status is S.IDLE
    assert not d.state.busy
    assert d.effects == (ReleaseStaleWork(),)


def test_idle_to_busy_on_heartbeat_with_work() -> None:
    assert decide(state(S.IDLE), Heartbeat(NOW, True), POLICY).state.status is S.BUSY


def test_busy_to_idle_on_heartbeat_without_work() -> None:
    assert decide(state(S.BUSY, busy=True), Heartbeat(NOW, False), POLICY).state.status is S.IDLE


def test_idle_to_busy_and_back_on_work_assignment() -> None:
    busy = decide(state(S.IDLE), WorkAssigned(True), POLICY).state
    assert busy.status is S.BUSY
    assert decide(busy, WorkAssigned(False), POLICY).state.status is S.IDLE


@pytest.mark.parametrize("status", [S.IDLE, S.BUSY, S.MAINTENANCE, S.QUARANTINED, S.UPDATING])
def test_any_live_status_to_offline_on_deadline_drops_assignments(status: S) -> None:
    d = decide(state(status, busy=status is S.BUSY), DeadlineExpired(NOW), POLICY)
    assert d.state.status is S.OFFLINE
    assert d.effects == (DropAssignments("heartbeat timeout"),)


def test_offline_stays_offline_on_deadline() -> None:
    d = decide(state(S.OFFLINE), DeadlineExpired(NOW), POLICY)
    assert d.state.status is S.OFFLINE and d.effects == ()


def test_busy_node_restarting_drops_its_assignments() -> None:
    d = decide(state(S.BUSY, busy=True), Online(NOW), POLICY)
    assert d.state.status is S.IDLE
    assert d.effects == (DropAssignments("node agent restarted"),)


def test_idle_to_maintenance_when_maintenance_is_due() -> None:
    s = state(S.IDLE, next_maintenance_at=NOW - timedelta(seconds=1))
    assert decide(s, Heartbeat(NOW, False), POLICY).state.status is S.MAINTENANCE


def test_busy_node_due_for_maintenance_finishes_its_range_first() -> None:
    s = state(S.BUSY, busy=True, next_maintenance_at=NOW - timedelta(seconds=1))
    still = decide(s, Heartbeat(NOW, True), POLICY).state
    assert still.status is S.BUSY
    assert not still.schedulable(NOW)
    assert decide(still, Heartbeat(NOW, False), POLICY).state.status is S.MAINTENANCE


def test_maintenance_to_idle_when_admin_clears_it() -> None:
    s = state(S.MAINTENANCE, next_maintenance_at=NOW - timedelta(hours=1))
    d = decide(s, AdminPatch(NOW, next_maintenance_at=None), POLICY)
    assert d.state.status is S.IDLE
    assert d.state.last_maintenance_at == NOW


def test_maintenance_to_idle_when_admin_moves_it_to_the_future() -> None:
    s = state(S.MAINTENANCE, next_maintenance_at=NOW - timedelta(hours=1))
    d = decide(s, AdminPatch(NOW, next_maintenance_at=NOW + timedelta(days=7)), POLICY)
    assert d.state.status is S.IDLE


def test_admin_scheduling_maintenance_now_moves_idle_node_to_maintenance() -> None:
    d = decide(state(S.IDLE), AdminPatch(NOW, next_maintenance_at=NOW), POLICY)
    assert d.state.status is S.MAINTENANCE


def test_maintenance_stays_on_heartbeat_while_due() -> None:
    s = state(S.MAINTENANCE, next_maintenance_at=NOW - timedelta(hours=1))
    assert decide(s, Heartbeat(NOW, False), POLICY).state.status is S.MAINTENANCE


def test_crash_counts_without_quarantine_below_the_limit() -> None:
    d = decide(state(S.BUSY, consecutive_failures=1), CrashCounted(NOW), POLICY)
    assert d.state.consecutive_failures == 2
    assert d.state.lifetime_crash_count == 1
    assert d.state.status is S.BUSY and d.state.accepts_new_jobs


def test_busy_to_quarantined_at_max_consecutive_failures() -> None:
    d = decide(state(S.BUSY, consecutive_failures=2), CrashCounted(NOW), POLICY)
    assert d.state.status is S.QUARANTINED
    assert not d.state.accepts_new_jobs


def test_quarantined_stays_on_heartbeat() -> None:
    s = state(S.QUARANTINED, accepts_new_jobs=False, consecutive_failures=3)
    assert decide(s, Heartbeat(NOW, False), POLICY).state.status is S.QUARANTINED


def test_quarantined_to_idle_when_admin_accepts_jobs_again() -> None:
    s = state(S.QUARANTINED, accepts_new_jobs=False, consecutive_failures=3)
    d = decide(s, AdminPatch(NOW, accepts_new_jobs=True), POLICY)
    assert d.state.status is S.IDLE
    assert d.state.consecutive_failures == 0


def test_quarantined_node_back_from_offline_is_still_quarantined() -> None:
    s = state(S.OFFLINE, accepts_new_jobs=False, consecutive_failures=3)
    assert decide(s, Online(NOW), POLICY).state.status is S.QUARANTINED
    assert decide(s, Heartbeat(NOW, False), POLICY).state.status is S.QUARANTINED


def test_offline_node_crash_counts_but_stays_offline() -> None:
    d = decide(state(S.OFFLINE, consecutive_failures=2), CrashCounted(NOW), POLICY)
    assert d.state.status is S.OFFLINE and not d.state.accepts_new_jobs


def test_work_success_ends_the_failure_streak() -> None:
    d = decide(state(S.BUSY, consecutive_failures=2), WorkSucceeded(), POLICY)
    assert d.state.consecutive_failures == 0


def test_idle_to_updating_when_update_sent() -> None:
    assert decide(state(S.IDLE), UpdateSent(NOW), POLICY).state.status is S.UPDATING


def test_busy_node_is_never_sent_to_updating() -> None:
    assert decide(state(S.BUSY, busy=True), UpdateSent(NOW), POLICY).state.status is S.BUSY


def test_updating_stays_on_heartbeat_and_returns_idle_on_online() -> None:
    s = state(S.UPDATING)
    assert decide(s, Heartbeat(NOW, False), POLICY).state.status is S.UPDATING
    assert decide(s, Online(NOW), POLICY).state.status is S.IDLE


def test_admin_deactivation_keeps_status_but_stops_scheduling() -> None:
    d = decide(state(S.IDLE), AdminPatch(NOW, is_active=False), POLICY)
    assert d.state.status is S.IDLE
    assert not d.state.schedulable(NOW)


def test_admin_patch_does_not_revive_an_offline_node() -> None:
    d = decide(state(S.OFFLINE), AdminPatch(NOW, accepts_new_jobs=True), POLICY)
    assert d.state.status is S.OFFLINE


def test_only_idle_active_accepting_nodes_are_schedulable() -> None:
    assert state(S.IDLE).schedulable(NOW)
    for s in (
        state(S.BUSY),
        state(S.OFFLINE),
        state(S.IDLE, accepts_new_jobs=False),
        state(S.IDLE, is_active=False),
        state(S.IDLE, next_maintenance_at=NOW),
    ):
        assert not s.schedulable(NOW)


def test_heartbeat_interval_shortens_while_work_waits() -> None:
    policy = NodePolicy(heartbeat_interval_sec=5, busy_heartbeat_interval_sec=1)
    assert heartbeat_interval(state(S.IDLE), False, policy) == 5
    assert heartbeat_interval(state(S.IDLE), True, policy) == 1


def test_heartbeat_interval_is_short_for_a_node_just_handed_work_even_busy() -> None:
    policy = NodePolicy(heartbeat_interval_sec=5, busy_heartbeat_interval_sec=1)
    busy = state(S.BUSY)
    assert heartbeat_interval(busy, False, policy, work_unacked=True) == 1
    # Acknowledged, and nothing says its work is short: the regular beat.
    assert heartbeat_interval(busy, False, policy) == 5
    assert heartbeat_interval(busy, False, policy, handed_work_sec_ago=0.5) == 5


def test_a_node_on_short_work_beats_sooner_while_its_current_work_is_young() -> None:
    policy = NodePolicy(heartbeat_interval_sec=5, busy_heartbeat_interval_sec=1)
    busy = state(S.BUSY)

    def interval(ago: float, last: float | None) -> int:
        return heartbeat_interval(busy, False, policy, handed_work_sec_ago=ago, last_work_sec=last)

    assert interval(0.5, 2.0) == 1  # its last range took 2 s: likely free before 5 s
    assert interval(4.9, 2.0) == 1
    assert interval(5.0, 2.0) == 5  # older than a regular interval: this one is long
    assert interval(0.5, 8.0) == 5  # it renders long ranges: one short beat per range only
    assert interval(0.5, None) == 5


def test_waiting_work_shortens_only_an_idle_nodes_interval() -> None:
    policy = NodePolicy(heartbeat_interval_sec=5, busy_heartbeat_interval_sec=1)
    assert heartbeat_interval(state(S.BUSY), True, policy) == 5
    assert heartbeat_interval(state(S.IDLE), True, policy) == 1


def test_heartbeat_interval_lengthens_when_the_fleet_would_exceed_the_rate_budget() -> None:
    policy = NodePolicy(heartbeat_interval_sec=5, max_heartbeats_per_sec=1000)
    assert heartbeat_interval(state(S.IDLE), False, policy, fleet_size=5000) == 5
    assert heartbeat_interval(state(S.IDLE), False, policy, fleet_size=5001) == 6
    assert heartbeat_interval(state(S.IDLE), False, policy, fleet_size=40_000) == 40
    unlimited = NodePolicy(heartbeat_interval_sec=5, max_heartbeats_per_sec=0)
    assert heartbeat_interval(state(S.IDLE), False, unlimited, fleet_size=10**6) == 5


def test_a_shed_interval_stretches_the_deadline_to_three_intervals() -> None:
    policy = NodePolicy(heartbeat_timeout_sec=15)
    assert heartbeat_deadline(policy, 5) == 15
    assert heartbeat_deadline(policy, 40) == 120
