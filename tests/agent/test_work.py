"""The work queue and a running range's progress: TrimRange and CancelRender rules."""

from __future__ import annotations

from uuid import uuid4

import pytest

from flatrender.agent.commands import RenderFrames
from flatrender.agent.work import RangeProgress, Trim, WorkQueue, trim_decision


def frames(start: int = 0, end: int = 99) -> RenderFrames:
    return RenderFrames(uuid4(), uuid4(), uuid4(), start, end, "http://put")


@pytest.mark.parametrize(
    ("next_frame", "finishing", "new_end", "expected"),
    [
        (10, False, 50, Trim.APPLIED),
        (10, False, 10, Trim.APPLIED),  # the frame being rendered becomes the last one
        (11, False, 10, Trim.TOO_LATE),  # frame 10 was already reported as an ordinary frame
        (10, True, 50, Trim.TOO_LATE),  # uploading
        (10, False, 99, Trim.NOT_SHORTER),
        (10, False, 120, Trim.NOT_SHORTER),
        (10, False, -1, Trim.INVALID),
    ],
)
def test_trim_decision(next_frame: int, finishing: bool, new_end: int, expected: Trim) -> None:
    assert trim_decision(0, 99, next_frame, finishing, new_end) is expected


def test_trim_of_a_running_range_moves_its_last_frame() -> None:
    progress = RangeProgress.of(frames(0, 99))
    for _ in range(5):
        progress.frame_done()
    assert progress.trim(20) is Trim.APPLIED and progress.end == 20
    assert progress.trim(3) is Trim.TOO_LATE and progress.end == 20


def test_progress_counts_frames_and_resumes_after_the_last_known_frame() -> None:
    progress = RangeProgress.of(frames(10, 12))
    assert progress.last_rendered is None
    assert [progress.frame_done() for _ in range(2)] == [10, 11]
    assert progress.last_rendered == 11 and not progress.done
    progress.resume_after(10)  # AE reset: frame 11 is done again
    assert progress.next_frame == 11
    progress.resume_after(9)
    assert progress.next_frame == 10
    for _ in range(3):
        progress.frame_done()
    assert progress.done
    with pytest.raises(RuntimeError):
        progress.frame_done()


def test_queue_keeps_arrival_order_and_cancels_a_waiting_range() -> None:
    queue = WorkQueue()
    a, b, c = frames(), frames(), frames()
    for work in (a, b, c):
        queue.push(work)
    assert queue.cancel(b.frame_job_id)
    assert not queue.cancel(uuid4())
    assert list(queue) == [a, c]
    assert queue.pop() is a and queue.pop() is c and queue.pop() is None


def test_trim_of_a_waiting_range_shortens_it() -> None:
    queue = WorkQueue()
    work = frames(10, 50)
    queue.push(work)
    assert queue.trim(work.frame_job_id, 30) is Trim.APPLIED
    assert queue.trim(work.frame_job_id, 5) is Trim.INVALID
    assert queue.trim(uuid4(), 30) is None
    popped = queue.pop()
    assert isinstance(popped, RenderFrames) and (popped.start_frame, popped.end_frame) == (10, 30)


def test_clear_returns_what_was_dropped() -> None:
    queue = WorkQueue()
    work = frames()
    queue.push(work)
    assert queue.clear() == [work] and len(queue) == 0
