"""Fault plans: deterministic per seed and node, within the range, as likely as asked."""

from __future__ import annotations

import pytest

from flatrender.agent.faults import FaultPlanner, FaultSettings, RangePlan


def plans(settings: FaultSettings, seed: int | None, name: str, n: int = 20) -> list[RangePlan]:
    planner = FaultPlanner(settings, seed, name)
    return [planner.plan_range(i * 10, i * 10 + 9) for i in range(n)]


def test_same_seed_and_node_give_the_same_faults() -> None:
    settings = FaultSettings(crash_rate=0.5, slow_frame_rate=0.2)
    assert plans(settings, 7, "sim-1") == plans(settings, 7, "sim-1")


def test_nodes_of_one_seed_get_different_faults() -> None:
    settings = FaultSettings(crash_rate=0.5, slow_frame_rate=0.2)
    assert plans(settings, 7, "sim-1") != plans(settings, 7, "sim-2")


def test_no_crash_rate_never_crashes_and_full_rate_always_crashes_inside_the_range() -> None:
    assert all(p.crash_frame is None for p in plans(FaultSettings(), 1, "n", 50))
    planner = FaultPlanner(FaultSettings(crash_rate=1.0), 1, "n")
    for start in range(0, 500, 10):
        plan = planner.plan_range(start, start + 4)
        assert plan.crash_frame is not None and start <= plan.crash_frame <= start + 4


def test_crash_rate_is_roughly_honoured() -> None:
    crashed = sum(
        p.crash_frame is not None for p in plans(FaultSettings(crash_rate=0.3), 3, "n", 400)
    )
    assert 80 <= crashed <= 160


def test_slow_frames_take_factor_times_longer() -> None:
    plan = FaultPlanner(FaultSettings(slow_frame_rate=1.0, slow_frame_factor=4), 1, "n").plan_range(
        5, 7
    )
    assert plan.slow_frames == {5, 6, 7}
    assert plan.frame_time(6, 0.5) == 2.0
    assert RangePlan().frame_time(6, 0.5) == 0.5


def test_without_crash_keeps_the_slow_frames() -> None:
    plan = RangePlan(crash_frame=3, slow_frames=frozenset({4}), slow_factor=2)
    assert plan.without_crash() == RangePlan(None, frozenset({4}), 2)


@pytest.mark.parametrize(
    "kwargs", [{"crash_rate": 1.5}, {"slow_frame_rate": -0.1}, {"slow_frame_factor": 0.5}]
)
def test_bad_settings_are_refused(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        FaultSettings(**kwargs)


def test_an_inverted_range_is_refused() -> None:
    with pytest.raises(ValueError):
        FaultPlanner(FaultSettings(), 1, "n").plan_range(5, 4)
