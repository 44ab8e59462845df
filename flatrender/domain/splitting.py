"""How a job's frames are cut into ranges, and where a long range may be trimmed (DESIGN §3, §6).

Splitting balances three wishes, in this order of strength:

1. no range is shorter than ``min_chunk`` frames (AfterFX start-up is costly), unless the whole
   job is shorter, in which case it is one range;
2. no range is longer than ``max_chunk`` frames, so that the work lost with a dead node (its
   range is requeued whole) stays small;
3. there are as many ranges as idle nodes, so that every idle node gets work.

``min_chunk`` wins over ``max_chunk`` when they cannot both hold (only possible when
``max_chunk < 2 × min_chunk - 1``). Range sizes differ by at most one frame, the longer ones
first. Ranges are inclusive ``(start, end)`` pairs that tile the job in order.

Trimming lets a late idle node take the unstarted tail of a range being rendered: the holder keeps
the frame it is rendering plus at least ``margin`` more (the ``TrimRange`` command needs time to
reach it), and otherwise half of the unrendered frames, rounded up, so holder and newcomer finish
about together. A tail shorter than ``min_tail`` is not worth a new AfterFX start.
"""

from __future__ import annotations


def split(
    start_frame: int,
    end_frame: int,
    *,
    idle_nodes: int,
    min_chunk: int,
    max_chunk: int,
) -> list[tuple[int, int]]:
    """Inclusive ranges tiling ``start_frame..end_frame`` (see the module rules).

    ``idle_nodes`` below 1 counts as 1. Raises :class:`ValueError` when ``end_frame <
    start_frame`` or a chunk bound is below 1.
    """
    if end_frame < start_frame:
        raise ValueError(f"end_frame {end_frame} is before start_frame {start_frame}")
    if min_chunk < 1 or max_chunk < 1:
        raise ValueError(f"chunk bounds must be ≥ 1, got min {min_chunk}, max {max_chunk}")
    total = end_frame - start_frame + 1
    most = max(1, total // min_chunk)  # with more, the shortest range drops below min_chunk
    fewest = -(-total // max_chunk)  # with fewer, the longest range exceeds max_chunk
    count = min(max(max(1, idle_nodes), fewest), most)
    size, longer = divmod(total, count)
    ranges: list[tuple[int, int]] = []
    first = start_frame
    for i in range(count):
        length = size + 1 if i < longer else size
        ranges.append((first, first + length - 1))
        first += length
    return ranges


def trim_point(
    start: int,
    end: int,
    next_unrendered_frame: int,
    *,
    min_tail: int,
    margin: int,
) -> int | None:
    """The new last frame of the range ``start..end`` so that a newcomer takes ``new_end+1..end``.

    ``next_unrendered_frame`` is the first frame the holder has not reported (it may be rendering
    it now); a value before ``start`` means nothing is rendered yet. The holder keeps at least
    ``next_unrendered_frame + margin`` and half the unrendered frames rounded up; the tail has at
    least ``min_tail`` frames (at least 1; callers pass no less than ``min_chunk_frames``). None
    when the tail would be shorter, or every frame is already rendered.
    """
    if end < start:
        raise ValueError(f"end {end} is before start {start}")
    first = max(start, next_unrendered_frame)
    if first > end:
        return None
    remaining = end - first + 1
    holder_keeps = max((remaining + 1) // 2, max(0, margin) + 1)
    new_end = first + holder_keeps - 1
    if end - new_end < max(1, min_tail):
        return None
    return new_end
