"""Every branch of the crash policy (DESIGN §6)."""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from flatrender.domain.crash_policy import CrashHistory, CrashVerdict, decide_crash
from flatrender.domain.model import CrashAction as A


def verdict(node: int, on_node: int, attempt: int, *, max_attempts: int = 3) -> CrashVerdict:
    return decide_crash(
        CrashHistory(node, on_node, attempt), max_attempts=max_attempts, node_restart_after=3
    )


def test_first_crash_of_range_on_node_resets_and_restarts_without_requeue() -> None:
    v = verdict(0, 0, 1)
    assert (v.action, v.requeue_range, v.fail_job) == (A.RESET_AND_RESTART, False, False)


def test_first_crash_on_last_attempt_still_resets_since_no_attempt_is_spent() -> None:
    v = verdict(0, 0, 3)
    assert (v.action, v.requeue_range, v.fail_job) == (A.RESET_AND_RESTART, False, False)


def test_repeat_crash_on_node_reassigns_work_as_next_attempt() -> None:
    v = verdict(1, 1, 1)
    assert (v.action, v.requeue_range, v.fail_job) == (A.REASSIGN_WORK, True, False)
    assert "attempt 2" in v.reason


def test_node_crashing_repeatedly_restarts_node_and_requeues() -> None:
    v = verdict(2, 0, 1)  # this crash is the third in the window
    assert (v.action, v.requeue_range, v.fail_job) == (A.RESTART_NODE, True, False)


def test_node_restart_takes_precedence_over_repeat_on_node() -> None:
    assert verdict(2, 1, 1).action is A.RESTART_NODE


def test_node_below_restart_threshold_is_not_restarted() -> None:
    assert verdict(1, 0, 1).action is A.RESET_AND_RESTART


def test_restart_after_one_restarts_on_every_crash() -> None:
    v = decide_crash(CrashHistory(0, 0, 1), max_attempts=3, node_restart_after=1)
    assert (v.action, v.requeue_range) == (A.RESTART_NODE, True)


def test_repeat_crash_past_max_attempts_fails_job_without_requeue() -> None:
    v = verdict(0, 1, 3)
    assert (v.action, v.requeue_range, v.fail_job) == (A.REASSIGN_WORK, False, True)
    assert "3 attempts" in v.reason


def test_node_restart_past_max_attempts_fails_job_and_tells_node_to_drop_range() -> None:
    v = verdict(5, 0, 3)
    assert (v.action, v.requeue_range, v.fail_job) == (A.REASSIGN_WORK, False, True)


def test_requeue_up_to_max_attempts_is_allowed() -> None:
    v = verdict(0, 1, 2)
    assert (v.requeue_range, v.fail_job) == (True, False)


@pytest.mark.parametrize(("max_attempts", "restart_after"), [(0, 3), (3, 0)])
def test_bad_policy_raises(max_attempts: int, restart_after: int) -> None:
    with pytest.raises(ValueError):
        decide_crash(
            CrashHistory(0, 0, 1), max_attempts=max_attempts, node_restart_after=restart_after
        )


@pytest.mark.parametrize(("node", "on_node", "attempt"), [(-1, 0, 1), (0, -1, 1), (0, 0, 0)])
def test_bad_history_raises(node: int, on_node: int, attempt: int) -> None:
    with pytest.raises(ValueError):
        CrashHistory(node, on_node, attempt)


@given(
    node=st.integers(min_value=0, max_value=10),
    on_node=st.integers(min_value=0, max_value=10),
    attempt=st.integers(min_value=1, max_value=10),
    max_attempts=st.integers(min_value=1, max_value=10),
    restart_after=st.integers(min_value=1, max_value=10),
)
def test_verdict_is_always_consistent(
    node: int, on_node: int, attempt: int, max_attempts: int, restart_after: int
) -> None:
    v = decide_crash(
        CrashHistory(node, on_node, attempt),
        max_attempts=max_attempts,
        node_restart_after=restart_after,
    )
    assert not (v.fail_job and v.requeue_range)
    if v.fail_job:
        assert v.action is A.REASSIGN_WORK and attempt + 1 > max_attempts
    if v.requeue_range:
        assert attempt + 1 <= max_attempts
    if v.action is A.RESET_AND_RESTART:
        assert not v.requeue_range and not v.fail_job
        assert on_node == 0 and node + 1 < restart_after
    assert v.reason
