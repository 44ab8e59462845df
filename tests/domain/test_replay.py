"""ReplayGuard: accepted signatures are refused again for the window, then forgotten; the caps."""

import hashlib
from uuid import UUID, uuid4

from flatrender.domain.replay import Admission, ReplayGuard
from flatrender.domain.signing import Signed

NODE = UUID("00000000-0000-0000-0000-0000000000aa")
OTHER = UUID("00000000-0000-0000-0000-0000000000bb")
NOW = 1_700_000_000.0
WINDOW = 300
STARTED = NOW - 1000  # the daemon has been up a while


def sig(t: float, n: int = 0) -> Signed:
    return Signed(int(t), hashlib.sha256(f"{t}/{n}".encode()).hexdigest())


def test_a_signature_is_admitted_once_then_refused_as_replayed() -> None:
    guard = ReplayGuard(STARTED)
    assert guard.admit(NODE, sig(NOW), NOW, WINDOW) is Admission.ADMITTED
    assert guard.admit(NODE, sig(NOW), NOW, WINDOW) is Admission.REPLAYED
    assert guard.admit(NODE, sig(NOW), NOW + 299, WINDOW) is Admission.REPLAYED
    assert len(guard) == 1


def test_another_signature_of_the_same_node_and_second_is_admitted() -> None:
    guard = ReplayGuard(STARTED)
    assert guard.admit(NODE, sig(NOW, 1), NOW, WINDOW) is Admission.ADMITTED
    assert guard.admit(NODE, sig(NOW, 2), NOW, WINDOW) is Admission.ADMITTED
    assert guard.admit(NODE, sig(NOW + 1, 1), NOW, WINDOW) is Admission.ADMITTED
    assert guard.remembered_by(NODE) == 3


def test_a_signature_is_forgotten_once_it_can_no_longer_verify() -> None:
    guard = ReplayGuard(STARTED)
    guard.admit(NODE, sig(NOW), NOW, WINDOW)
    guard.admit(NODE, sig(NOW + 10), NOW + 10, WINDOW)
    # Still verifiable at t + window: still remembered.
    assert guard.admit(OTHER, sig(NOW + 300, 9), NOW + 300, WINDOW) is Admission.ADMITTED
    assert guard.remembered_by(NODE) == 2
    assert guard.admit(OTHER, sig(NOW + 301, 9), NOW + 301, WINDOW) is Admission.ADMITTED
    assert guard.remembered_by(NODE) == 1  # t = NOW is past the window
    assert guard.admit(OTHER, sig(NOW + 311, 9), NOW + 311, WINDOW) is Admission.ADMITTED
    assert guard.remembered_by(NODE) == 0
    assert len(guard) == 3  # OTHER's own, all within the window


def test_a_signature_dated_ahead_is_remembered_until_its_own_time_plus_the_window() -> None:
    guard = ReplayGuard(STARTED)
    ahead = sig(NOW + 300)
    assert guard.admit(NODE, ahead, NOW, WINDOW) is Admission.ADMITTED
    assert guard.admit(NODE, ahead, NOW + 600, WINDOW) is Admission.REPLAYED
    assert guard.admit(OTHER, sig(NOW + 601, 1), NOW + 601, WINDOW) is Admission.ADMITTED
    assert guard.remembered_by(NODE) == 0


def test_a_longer_window_after_reload_never_revives_a_forgotten_signature() -> None:
    guard = ReplayGuard(STARTED)
    guard.admit(NODE, sig(NOW), NOW, 600)
    # Reloaded with a shorter window: kept for the longest one seen.
    assert guard.admit(OTHER, sig(NOW + 400), NOW + 400, WINDOW) is Admission.ADMITTED
    assert guard.admit(NODE, sig(NOW), NOW + 400, 600) is Admission.REPLAYED


def test_a_node_past_its_share_is_refused_until_its_oldest_expire() -> None:
    guard = ReplayGuard(STARTED, per_node=3, total=100)
    for n in range(3):
        assert guard.admit(NODE, sig(NOW, n), NOW, WINDOW) is Admission.ADMITTED
    assert guard.admit(NODE, sig(NOW, 3), NOW, WINDOW) is Admission.NODE_FULL
    assert guard.admit(NODE, sig(NOW, 0), NOW, WINDOW) is Admission.REPLAYED  # still precise
    assert guard.admit(OTHER, sig(NOW, 3), NOW, WINDOW) is Admission.ADMITTED
    assert guard.admit(NODE, sig(NOW + 301, 3), NOW + 301, WINDOW) is Admission.ADMITTED


def test_the_total_cap_bounds_memory_whatever_the_number_of_nodes() -> None:
    guard = ReplayGuard(STARTED, per_node=10, total=50)
    admitted = [guard.admit(uuid4(), sig(NOW, n), NOW, WINDOW) for n in range(80)]
    assert admitted.count(Admission.ADMITTED) == 50
    assert set(admitted[50:]) == {Admission.FULL}
    assert len(guard) == 50
    # Everything expires: the guard is empty again, node shares included.
    assert guard.admit(NODE, sig(NOW + 301), NOW + 301, WINDOW) is Admission.ADMITTED
    assert len(guard) == 1
    assert len(guard._shares) == 1


def test_a_flood_from_one_node_is_held_to_its_share() -> None:
    guard = ReplayGuard(STARTED, per_node=100, total=10_000)
    results = [guard.admit(NODE, sig(NOW + i // 50, i), NOW + i // 50, WINDOW) for i in range(5000)]
    assert results.count(Admission.ADMITTED) == 100
    assert len(guard) == 100


def test_a_wall_clock_stepped_back_prunes_nothing_it_should_keep() -> None:
    guard = ReplayGuard(STARTED)
    guard.admit(NODE, sig(NOW), NOW, WINDOW)
    guard.admit(OTHER, sig(NOW - 100, 1), NOW - 100, WINDOW)
    assert guard.admit(NODE, sig(NOW), NOW - 100, WINDOW) is Admission.REPLAYED
    assert guard.remembered_by(NODE) == 1


def test_a_wall_clock_stepped_back_never_revives_a_forgotten_signature() -> None:
    guard = ReplayGuard(STARTED)
    old = sig(NOW)
    assert guard.admit(NODE, old, NOW, WINDOW) is Admission.ADMITTED
    assert guard.admit(OTHER, sig(NOW + 400, 1), NOW + 400, WINDOW) is Admission.ADMITTED
    assert guard.remembered_by(NODE) == 0  # forgotten: it can no longer verify at NOW + 400
    # The clock steps back 200 s: ``old`` verifies again (|NOW + 200 - NOW| <= 300), yet the
    # guard's now stays NOW + 400, and a signature older than its memory is refused.
    assert guard.admit(NODE, old, NOW + 200, WINDOW) is Admission.TOO_OLD
    assert guard.admit(NODE, sig(NOW + 99, 2), NOW + 200, WINDOW) is Admission.TOO_OLD
    assert guard.remembered_by(NODE) == 0
    # What it still remembers, or never saw, is judged as before.
    assert guard.admit(OTHER, sig(NOW + 400, 1), NOW + 200, WINDOW) is Admission.REPLAYED
    assert guard.admit(NODE, sig(NOW + 100, 3), NOW + 200, WINDOW) is Admission.ADMITTED


def test_a_signature_dated_before_the_guard_started_is_refused() -> None:
    # A restart or a fail-over at NOW + 0.7: what was signed before it may have been accepted
    # by the previous process, whose memory is gone.
    guard = ReplayGuard(NOW + 0.7)
    for t in (NOW - 250, NOW - 1):
        assert guard.admit(NODE, sig(t), NOW + 1, WINDOW) is Admission.TOO_OLD
    assert len(guard) == 0
    # Floored to the second: a node signing in the second the guard started is not refused.
    assert guard.admit(NODE, sig(NOW), NOW + 1, WINDOW) is Admission.ADMITTED
    assert guard.admit(NODE, sig(NOW + 1), NOW + 1, WINDOW) is Admission.ADMITTED
    assert guard.admit(NODE, sig(NOW + 1), NOW + 2, WINDOW) is Admission.REPLAYED
