"""The staged rollout plan and its halt rule, without I/O: every branch, named after its rule."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from uuid import UUID

import pytest

from flatrender.agent.commands import UpdateSoftware
from flatrender.domain.rollout import (
    Crash,
    CrashRates,
    Decision,
    RolloutPolicy,
    RolloutStatus,
    Target,
    crash_halt_reason,
    crash_rates,
    decide,
    observation_start,
    send_quota,
    stage_bounds,
    version_stem,
)

S = RolloutStatus
NOW = datetime(2030, 1, 1, 12, 0, tzinfo=UTC)
STEM = "agent-2.0.0"
POLICY = RolloutPolicy()  # 10 %, observe 300 s, factor 2, min 1/h, min 2 crashes, timeout 1800 s


def nid(i: int) -> UUID:
    return UUID(int=i + 1)


def ago(seconds: float) -> datetime:
    return NOW - timedelta(seconds=seconds)


def queued(i: int, ready: bool = True, version: str = "agent-1.0.0") -> Target:
    return Target(nid(i), S.QUEUED, True, node_version=version, node_ready=ready)


def sent(i: int, seconds_ago: float = 10, version: str = "agent-1.0.0") -> Target:
    return Target(nid(i), S.SENT, True, sent_at=ago(seconds_ago), node_version=version)


def confirmed(i: int, seconds_ago: float = 600) -> Target:
    at = ago(seconds_ago)
    return Target(nid(i), S.CONFIRMED, True, sent_at=at, confirmed_at=at, node_version=STEM)


def failed(i: int) -> Target:
    return Target(nid(i), S.FAILED, True)


def run(targets: list[Target], crashes: Sequence[Crash] = (), active: bool = True) -> Decision:
    return decide(STEM, targets, crashes, NOW, POLICY, active=active)


# ------------------------------------------------------------------ version stem


@pytest.mark.parametrize(
    ("file_name", "stem"),
    [
        ("agent-2.0.0.zip", "agent-2.0.0"),
        ("agent-2.0.0.tar.gz", "agent-2.0.0"),
        ("updates/x/agent-3.msi", "agent-3"),
        ("agent-2.0.1", "agent-2.0.1"),  # a numeric suffix is part of the version
        ("agent", "agent"),
        (".zip", ".zip"),
    ],
)
def test_version_stem_drops_the_extension_like_the_agent_does(file_name: str, stem: str) -> None:
    assert version_stem(file_name) == stem
    command = UpdateSoftware(nid(0), nid(1), file_name, "http://x")
    assert command.agent_version == stem


# ------------------------------------------------------------------ stages


@pytest.mark.parametrize(
    ("n", "fraction", "bounds"),
    [
        (0, 0.1, []),
        (1, 0.1, [1]),
        (3, 0.1, [1, 3]),
        (10, 0.1, [1, 3, 7, 10]),
        (30, 0.1, [3, 9, 21, 30]),  # 0.1 × 30 is a stage of 3, not 4 (binary rounding)
        (11, 0.1, [2, 6, 11]),
        (5, 1.0, [5]),
        (4, 0.5, [2, 4]),
    ],
)
def test_first_stage_is_ceil_fraction_at_least_one_and_each_next_stage_doubles(
    n: int, fraction: float, bounds: list[int]
) -> None:
    assert stage_bounds(n, fraction) == bounds


def test_with_ten_queued_nodes_only_one_is_sent_in_stage_one() -> None:
    decision = run([queued(i) for i in range(10)])
    assert decision.send == (nid(0),)
    assert decision.halt is None and not decision.done


def test_a_node_that_is_not_ready_waits_and_the_next_ready_one_goes_first() -> None:
    decision = run([queued(0, ready=False), queued(1), queued(2)])
    assert decision.send == (nid(1),)


def test_nothing_is_sent_while_no_queued_node_is_ready() -> None:
    assert run([queued(0, ready=False), queued(1, ready=False)]).send == ()


def test_stage_does_not_advance_while_a_node_is_in_flight() -> None:
    decision = run([sent(0)] + [queued(i) for i in range(1, 10)])
    assert decision.send == () and not decision.done


def test_stage_does_not_advance_before_the_observation_window_passed() -> None:
    decision = run([confirmed(0, seconds_ago=299)] + [queued(i) for i in range(1, 10)])
    assert decision.send == ()


def test_stage_advances_when_all_settled_and_observed_and_the_next_stage_doubles() -> None:
    decision = run([confirmed(0, seconds_ago=300)] + [queued(i) for i in range(1, 10)])
    assert decision.send == (nid(1), nid(2))


def test_failed_nodes_count_as_settled_and_need_no_observation() -> None:
    decision = run([failed(0)] + [queued(i) for i in range(1, 10)])
    assert decision.send == (nid(1), nid(2))


def test_a_partially_sent_stage_is_filled_up_before_anything_else() -> None:
    targets = [confirmed(0, 900), sent(1)] + [queued(i) for i in range(2, 10)]
    assert run(targets).send == (nid(2),)


def test_the_observation_window_runs_from_the_stages_last_confirmation() -> None:
    targets = [confirmed(0, 900), confirmed(1, 900), confirmed(2, 100)]
    targets += [queued(i) for i in range(3, 10)]
    assert run(targets).send == ()
    assert send_quota(targets, NOW + timedelta(seconds=200), POLICY) == 4


def test_wave_is_done_when_the_last_stage_is_settled_and_observed() -> None:
    assert run([confirmed(0, 300), failed(1)]).done
    assert not run([confirmed(0, 299), failed(1)]).done


def test_an_empty_wave_is_done_at_once() -> None:
    assert run([]).done


def test_rows_outside_the_wave_and_halted_rows_take_no_part_in_the_plan() -> None:
    old = Target(nid(7), S.QUEUED, False, node_ready=True)
    halted = Target(nid(8), S.HALTED, True, node_ready=True)
    decision = run([old, halted, queued(0)])
    assert decision.send == (nid(0),)


# ------------------------------------------------------------------ confirmation


def test_a_sent_node_reporting_the_new_version_is_confirmed() -> None:
    targets = [confirmed(0, 900), sent(1, version=STEM), sent(2)]
    decision = run(targets + [queued(i) for i in range(3, 10)])
    assert decision.confirm == (nid(1),)
    assert decision.send == ()  # node 2 of stage 2 is still in flight


def test_a_queued_node_already_running_the_version_is_confirmed_without_a_command() -> None:
    decision = run([queued(0, version=STEM), queued(1), queued(2)])
    assert decision.adopt == (nid(0),)
    assert decision.send == ()  # stage 1 (one node) is the adopted one, observed from now


def test_confirmed_in_this_round_starts_the_observation_window() -> None:
    decision = run([sent(0, version=STEM), queued(1), queued(2)])
    assert decision.confirm == (nid(0),) and decision.send == () and not decision.done


# ------------------------------------------------------------------ halting on silence


def test_a_sent_node_silent_past_the_confirm_timeout_halts_the_rollout() -> None:
    decision = run([sent(0, seconds_ago=1800)] + [queued(i) for i in range(1, 10)])
    assert decision.timed_out == (nid(0),)
    assert decision.halt is not None
    assert "did not report agent version 'agent-2.0.0' within 1800 s" in decision.halt
    assert str(nid(0)) in decision.halt
    assert decision.send == ()


def test_a_sent_node_within_the_confirm_timeout_does_not_halt() -> None:
    decision = run([sent(0, seconds_ago=1799)] + [queued(i) for i in range(1, 10)])
    assert decision.halt is None and decision.timed_out == ()


def test_an_inactive_update_only_follows_nodes_in_flight() -> None:
    targets = [sent(0, version=STEM), sent(1, seconds_ago=4000), queued(2)]
    decision = run(targets, active=False)
    assert decision == Decision(confirm=(nid(0),), timed_out=(nid(1),))


# ------------------------------------------------------------------ halting on crashes


def test_observation_starts_at_the_first_confirmation_of_the_wave() -> None:
    targets = [confirmed(0, 900), confirmed(1, 300), queued(2)]
    assert observation_start(targets) == ago(900)
    assert observation_start([queued(0)]) is None


def test_crash_rates_count_updated_nodes_since_their_own_confirmation() -> None:
    wave = [confirmed(0, 3600), confirmed(1, 1800), queued(2), sent(3)]
    crashes = [
        Crash(nid(0), ago(3000)),
        Crash(nid(1), ago(2000)),  # before node 1 was updated: does not count
        Crash(nid(1), ago(100)),
        Crash(nid(2), ago(3500)),
        Crash(nid(3), ago(4000)),  # before the wave's first confirmation: does not count
    ]
    rates = crash_rates(wave, crashes, NOW)
    assert rates == CrashRates(2, 2, 1.5, 2, 1, 2.0)
    assert rates.updated_rate == pytest.approx(2 / 1.5)
    assert rates.rest_rate == pytest.approx(0.5)


def test_crash_rates_are_zero_before_any_confirmation() -> None:
    rates = crash_rates([queued(0)], [Crash(nid(0), ago(10))], NOW)
    assert (rates.updated_rate, rates.rest_rate, rates.rest_nodes) == (0.0, 0.0, 1)


def test_updated_crashes_with_no_exposure_are_an_infinite_rate() -> None:
    assert CrashRates(1, 1, 0.0, 0, 0, 0.0).updated_rate == float("inf")


def test_rollout_halts_when_updated_nodes_crash_above_factor_times_the_rest() -> None:
    targets = [confirmed(0, 600)] + [queued(i) for i in range(1, 10)]
    crashes = [Crash(nid(0), ago(500)), Crash(nid(0), ago(100))]
    decision = run(targets, crashes)
    assert decision.halt is not None
    assert decision.send == ()
    # Both rates and the counts behind them are stated.
    assert "updated nodes crash 12.00 times per node-hour" in decision.halt
    assert "(2 crashes on 1 updated nodes over 0.17 node-hours)" in decision.halt
    assert "2 x 0.00 of the not-yet-updated nodes (0 crashes on 9 nodes over 1.50" in decision.halt


def test_no_halt_below_min_crashes_whatever_the_rate() -> None:
    targets = [confirmed(0, 60)] + [queued(i) for i in range(1, 10)]
    decision = run(targets, [Crash(nid(0), ago(30))])  # 60 per node-hour, but one crash
    assert decision.halt is None


def test_no_halt_when_the_rest_crashes_as_often() -> None:
    targets = [confirmed(0, 3600), queued(1)]
    crashes = [Crash(nid(0), ago(100)), Crash(nid(0), ago(200))]
    crashes += [Crash(nid(1), ago(300)), Crash(nid(1), ago(400))]
    rates = crash_rates(targets, crashes, NOW)
    assert rates.updated_rate == pytest.approx(rates.rest_rate) == pytest.approx(2.0)
    assert run(targets, crashes).halt is None


def test_halt_exactly_above_factor_times_the_rest_not_at_it() -> None:
    policy = RolloutPolicy(min_crash_rate_per_hour=0.0)
    at = CrashRates(1, 4, 1.0, 1, 2, 1.0)  # 4/h against 2 × 2/h
    above = CrashRates(1, 5, 1.0, 1, 2, 1.0)
    assert crash_halt_reason(at, policy) is None
    assert crash_halt_reason(above, policy) is not None


def test_the_minimum_rate_protects_against_a_quiet_rest() -> None:
    policy = RolloutPolicy(min_crash_rate_per_hour=3.0)
    assert crash_halt_reason(CrashRates(1, 3, 1.0, 9, 0, 9.0), policy) is None
    assert crash_halt_reason(CrashRates(1, 4, 1.0, 9, 0, 9.0), policy) is not None


def test_crashes_after_the_last_stage_still_halt_during_its_observation() -> None:
    targets = [confirmed(0, 120), confirmed(1, 120)]
    crashes = [Crash(nid(0), ago(60)), Crash(nid(1), ago(30))]
    decision = run(targets, crashes)
    assert decision.halt is not None and not decision.done
