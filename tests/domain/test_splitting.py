"""Splitting a job into ranges and trimming a range's tail (DESIGN §3, §6)."""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from flatrender.domain.splitting import split, trim_point


@st.composite
def split_args(draw: st.DrawFn) -> tuple[int, int, int, int, int]:
    start = draw(st.integers(min_value=0, max_value=10_000))
    total = draw(st.integers(min_value=1, max_value=5_000))
    min_chunk = draw(st.integers(min_value=1, max_value=400))
    max_chunk = draw(st.integers(min_value=1, max_value=1_000))
    idle = draw(st.integers(min_value=-2, max_value=200))
    return start, start + total - 1, idle, min_chunk, max_chunk


@given(split_args())
def test_split_tiles_the_job_exactly_in_order(args: tuple[int, int, int, int, int]) -> None:
    start, end, idle, lo, hi = args
    ranges = split(start, end, idle_nodes=idle, min_chunk=lo, max_chunk=hi)
    assert ranges[0][0] == start and ranges[-1][1] == end
    for (_, a_end), (b_start, _) in zip(ranges, ranges[1:], strict=False):
        assert b_start == a_end + 1
    assert all(s <= e for s, e in ranges)


@given(split_args())
def test_split_sizes_and_count(args: tuple[int, int, int, int, int]) -> None:
    start, end, idle, lo, hi = args
    total = end - start + 1
    ranges = split(start, end, idle_nodes=idle, min_chunk=lo, max_chunk=hi)
    sizes = [e - s + 1 for s, e in ranges]
    assert max(sizes) - min(sizes) <= 1
    if total < lo:
        assert len(ranges) == 1  # a job shorter than min_chunk is one range
    else:
        assert min(sizes) >= lo  # min_chunk always holds
    if hi >= 2 * lo - 1:  # both bounds can hold together
        assert max(sizes) <= hi
    # As many ranges as idle nodes, unless a bound forbids it.
    wanted = max(1, idle)
    fewest = -(-total // hi)
    most = max(1, total // lo)
    assert len(ranges) == min(max(wanted, fewest), most)


def test_split_gives_every_idle_node_work() -> None:
    assert split(0, 999, idle_nodes=4, min_chunk=30, max_chunk=300) == [
        (0, 249),
        (250, 499),
        (500, 749),
        (750, 999),
    ]


def test_split_zero_idle_nodes_counts_as_one() -> None:
    assert split(0, 99, idle_nodes=0, min_chunk=30, max_chunk=300) == [(0, 99)]


def test_split_job_shorter_than_min_chunk_is_one_range() -> None:
    assert split(10, 19, idle_nodes=5, min_chunk=30, max_chunk=300) == [(10, 19)]


def test_split_min_chunk_limits_the_count_and_longer_ranges_come_first() -> None:
    assert split(0, 99, idle_nodes=10, min_chunk=30, max_chunk=300) == [
        (0, 33),
        (34, 66),
        (67, 99),
    ]


def test_split_max_chunk_makes_more_ranges_than_idle_nodes() -> None:
    ranges = split(0, 999, idle_nodes=1, min_chunk=30, max_chunk=300)
    assert [e - s + 1 for s, e in ranges] == [250, 250, 250, 250]


def test_split_min_chunk_wins_over_max_chunk() -> None:
    assert split(0, 34, idle_nodes=3, min_chunk=30, max_chunk=20) == [(0, 34)]


@pytest.mark.parametrize(
    ("start", "end", "lo", "hi"), [(10, 9, 30, 300), (0, 9, 0, 300), (0, 9, 30, 0)]
)
def test_split_rejects_bad_arguments(start: int, end: int, lo: int, hi: int) -> None:
    with pytest.raises(ValueError):
        split(start, end, idle_nodes=1, min_chunk=lo, max_chunk=hi)


@given(
    start=st.integers(min_value=0, max_value=1_000),
    length=st.integers(min_value=1, max_value=2_000),
    done=st.integers(min_value=-5, max_value=2_100),
    min_tail=st.integers(min_value=0, max_value=200),
    margin=st.integers(min_value=0, max_value=50),
)
def test_trim_point_keeps_margin_and_a_worthwhile_tail(
    start: int, length: int, done: int, min_tail: int, margin: int
) -> None:
    end = start + length - 1
    nxt = start + done
    new_end = trim_point(start, end, nxt, min_tail=min_tail, margin=margin)
    first = max(start, nxt)
    if new_end is None:
        if first <= end:
            remaining = end - first + 1
            keep = max((remaining + 1) // 2, margin + 1)
            assert end - (first + keep - 1) < max(1, min_tail)
        return
    assert start <= first <= new_end < end  # the holder keeps the frame it renders
    assert new_end >= first + margin
    assert end - new_end >= max(1, min_tail)
    holder_share = new_end - first + 1
    tail_share = end - new_end
    assert holder_share >= tail_share  # halving, or more for the margin
    if holder_share > margin + 1:
        assert holder_share - tail_share <= 1  # both finish about together


def test_trim_point_halves_the_unrendered_frames() -> None:
    assert trim_point(0, 299, 0, min_tail=60, margin=5) == 149
    assert trim_point(0, 299, 100, min_tail=60, margin=5) == 199
    assert trim_point(0, 300, 100, min_tail=60, margin=5) == 200  # odd: the holder keeps more


def test_trim_point_margin_wins_over_halving() -> None:
    assert trim_point(0, 99, 0, min_tail=10, margin=70) == 70


def test_trim_point_none_when_tail_too_short() -> None:
    assert trim_point(0, 299, 250, min_tail=60, margin=5) is None


def test_trim_point_none_when_everything_is_rendered() -> None:
    assert trim_point(0, 299, 300, min_tail=1, margin=0) is None


def test_trim_point_before_any_frame_counts_from_start() -> None:
    assert trim_point(100, 399, 0, min_tail=60, margin=5) == 249


def test_trim_point_rejects_inverted_range() -> None:
    with pytest.raises(ValueError):
        trim_point(10, 9, 10, min_tail=1, margin=0)
