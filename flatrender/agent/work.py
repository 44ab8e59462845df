"""The node's work bookkeeping (pure): the queue of waiting work and a running range's progress.

A node renders one range (or builds one replica) at a time; further ``RenderFrames`` and
``PrepareReplica`` commands wait in :class:`WorkQueue` in arrival order. ``TrimRange`` and
``CancelRender`` may reach a range while it waits or while it runs (:class:`RangeProgress`).
"""

from __future__ import annotations

import collections
import enum
from collections.abc import Iterator
from uuid import UUID

import attrs

from flatrender.agent.commands import RenderFrames, Work


class Trim(enum.Enum):
    APPLIED = "applied"
    NOT_SHORTER = "not_shorter"  # end_frame is at or past the current end: nothing to do
    TOO_LATE = "too_late"  # the range already rendered past end_frame, or is finishing
    INVALID = "invalid"  # end_frame before the range's start


def trim_decision(start: int, end: int, next_frame: int, finishing: bool, new_end: int) -> Trim:
    """Whether a range ``start..end`` whose frame ``next_frame`` is the one being rendered (all
    before it are done and reported) can end at ``new_end`` instead.

    A frame that was already reported as an ordinary frame cannot become the last one: the last
    frame is reported only after the output is uploaded, and that report is what makes the
    orchestrator validate the range.
    """
    if new_end < start:
        return Trim.INVALID
    if new_end >= end:
        return Trim.NOT_SHORTER
    if finishing or new_end < next_frame:
        return Trim.TOO_LATE
    return Trim.APPLIED


@attrs.define
class RangeProgress:
    """A running range: frames ``start..next_frame-1`` are rendered; ``end`` may shrink (trim)."""

    start: int
    end: int
    next_frame: int = attrs.field()
    finishing: bool = False  # writing and uploading the output: the range can no longer change

    @next_frame.default
    def _first(self) -> int:
        return self.start

    @classmethod
    def of(cls, command: RenderFrames) -> RangeProgress:
        return cls(start=command.start_frame, end=command.end_frame)

    @property
    def done(self) -> bool:
        return self.next_frame > self.end

    @property
    def last_rendered(self) -> int | None:
        return self.next_frame - 1 if self.next_frame > self.start else None

    def frame_done(self) -> int:
        """Record that ``next_frame`` is rendered; returns it."""
        if self.done:
            raise RuntimeError("the range is already complete")
        frame = self.next_frame
        self.next_frame += 1
        return frame

    def resume_after(self, last_known_frame: int) -> None:
        """Continue after ``last_known_frame`` (after an AE reset): later frames are redone."""
        self.next_frame = max(self.start, min(self.next_frame, last_known_frame + 1))

    def trim(self, new_end: int) -> Trim:
        decision = trim_decision(self.start, self.end, self.next_frame, self.finishing, new_end)
        if decision is Trim.APPLIED:
            self.end = new_end
        return decision


class WorkQueue:
    """Work waiting for the node, oldest first."""

    def __init__(self) -> None:
        self._items: collections.deque[Work] = collections.deque()

    def __len__(self) -> int:
        return len(self._items)

    def __iter__(self) -> Iterator[Work]:
        return iter(self._items)

    def push(self, work: Work) -> None:
        self._items.append(work)

    def pop(self) -> Work | None:
        return self._items.popleft() if self._items else None

    def clear(self) -> list[Work]:
        dropped = list(self._items)
        self._items.clear()
        return dropped

    def cancel(self, frame_job_id: UUID) -> bool:
        """Remove the waiting range ``frame_job_id``; False when it is not waiting here."""
        kept = [w for w in self._items if not _is_range(w, frame_job_id)]
        found = len(kept) != len(self._items)
        self._items = collections.deque(kept)
        return found

    def trim(self, frame_job_id: UUID, new_end: int) -> Trim | None:
        """Shorten the waiting range ``frame_job_id``; None when it is not waiting here."""
        for i, work in enumerate(self._items):
            if _is_range(work, frame_job_id):
                assert isinstance(work, RenderFrames)
                decision = trim_decision(
                    work.start_frame, work.end_frame, work.start_frame, False, new_end
                )
                if decision is Trim.APPLIED:
                    self._items[i] = attrs.evolve(work, end_frame=new_end)
                return decision
        return None


def _is_range(work: Work, frame_job_id: UUID) -> bool:
    return isinstance(work, RenderFrames) and work.frame_job_id == frame_job_id
