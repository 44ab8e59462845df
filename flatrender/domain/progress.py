"""RenderProgress: the one builder behind ``GET .../progress`` and the WebSocket (DESIGN §5).

Pure: both paths hand it the same inputs (the job's state, its preview and message, and the
observed frame rate), the job actor's in-memory state for a live job and the state loaded from
PostgreSQL for a finished one, so the poll and the push cannot disagree about the same state.
Everything the builder reads is a :class:`ProgressFacts` (a few numbers per current range):
:func:`facts` takes them from a whole JobState, and a finished job's are read straight from
PostgreSQL without loading every frame report (``persistence.progress``).
"""

from __future__ import annotations

import json
import math
from collections import deque
from typing import Any
from uuid import UUID

import attrs

from flatrender.domain.job_state import TERMINAL_STEPS, JobState, JobStep, RangeStatus

# The observed frame rate is taken over this much recent time.
RATE_WINDOW_SEC = 30.0


@attrs.frozen
class ProgressInputs:
    """Everything a RenderProgress is built from; ``revision`` orders two of the same job."""

    state: JobState
    revision: int
    preview_b64: str | None = None
    message: str | None = None


@attrs.frozen
class RenderProgress:
    """The contract's ``RenderProgress`` (field order is the wire order)."""

    job_id: UUID
    step: str
    progress: int
    current_frame: int | None
    total_frames: int
    eta_seconds: int | None
    preview_b64: str | None
    active_nodes: int
    message: str | None

    def to_json(self) -> dict[str, Any]:
        return {
            "job_id": str(self.job_id),
            "step": self.step,
            "progress": self.progress,
            "current_frame": self.current_frame,
            "total_frames": self.total_frames,
            "eta_seconds": self.eta_seconds,
            "preview_b64": self.preview_b64,
            "active_nodes": self.active_nodes,
            "message": self.message,
        }

    def encode(self) -> str:
        """The WebSocket text frame: serialised once, sent to every subscriber."""
        return json.dumps(self.to_json(), separators=(",", ":"))

    @property
    def terminal(self) -> bool:
        return self.step in ("Completed", "Failed", "Cancelled")


@attrs.frozen
class RangeFacts:
    """What the builder needs of one current (not Failed) range."""

    status: RangeStatus
    frame_count: int
    reported: int  # distinct frames reported
    last_reported: int | None  # the highest frame reported
    node_id: UUID | None


@attrs.frozen
class ProgressFacts:
    """Everything a RenderProgress is built from, but the frame rate."""

    job_id: UUID
    step: JobStep
    total_frames: int
    ranges: tuple[RangeFacts, ...]  # the current ranges
    preview_b64: str | None
    message: str | None  # the cancel reason, else the failure message

    @property
    def terminal(self) -> bool:
        return self.step in TERMINAL_STEPS


def facts(inputs: ProgressInputs) -> ProgressFacts:
    state = inputs.state
    return ProgressFacts(
        job_id=state.job_id,
        step=state.step,
        total_frames=state.total_frames,
        ranges=tuple(
            RangeFacts(
                status=r.status,
                frame_count=r.frame_count,
                reported=len(r.reported_frames),
                last_reported=max(r.reported_frames) if r.reported_frames else None,
                node_id=r.node_id,
            )
            for r in state.current_ranges
        ),
        preview_b64=inputs.preview_b64,
        message=inputs.message or state.failed_message,
    )


def _frames_done(ranges: tuple[RangeFacts, ...]) -> int:
    return sum(r.frame_count if r.status is RangeStatus.VALIDATED else r.reported for r in ranges)


def _percent(step: JobStep, done: int, total_frames: int) -> int:
    if step is JobStep.COMPLETED:
        return 100
    return min(99, done * 100 // max(total_frames, 1))


def frames_done(state: JobState) -> int:
    """Frames reported by the current ranges (a validated range counts whole)."""
    return _frames_done(facts(ProgressInputs(state, 0)).ranges)


def percent(state: JobState) -> int:
    """Percent done: 100 only once Completed (merging still has work to do)."""
    return _percent(state.step, frames_done(state), state.total_frames)


def frames_reported(state: JobState) -> int:
    """Every frame report the job took, failed attempts included: never goes down."""
    return sum(len(r.reported_frames) for r in state.ranges)


def build(inputs: ProgressInputs, frames_per_sec: float | None) -> RenderProgress:
    return build_from(facts(inputs), frames_per_sec)


def build_from(f: ProgressFacts, frames_per_sec: float | None) -> RenderProgress:
    """The one builder: a live job's facts (from its state) and a finished one's (from storage)."""
    done = _frames_done(f.ranges)
    frames = [r.last_reported for r in f.ranges if r.last_reported is not None]
    eta = None
    if not f.terminal and frames_per_sec is not None and frames_per_sec > 0:
        eta = math.ceil(max(f.total_frames - done, 0) / frames_per_sec)
    active = (
        0
        if f.terminal
        else len(
            {
                r.node_id
                for r in f.ranges
                if r.node_id is not None
                and r.status in (RangeStatus.ASSIGNED, RangeStatus.RENDERING)
            }
        )
    )
    return RenderProgress(
        job_id=f.job_id,
        step=f.step.value,
        progress=_percent(f.step, done, f.total_frames),
        current_frame=max(frames) if frames else None,
        total_frames=f.total_frames,
        eta_seconds=eta,
        preview_b64=f.preview_b64,
        active_nodes=active,
        message=f.message,
    )


class FrameRate:
    """Frames per second over the last ``window`` seconds, from (time, frames so far) samples.

    Times are the caller's (trio clock); counts never go down (:func:`frames_reported`).
    """

    __slots__ = ("_samples", "_window")

    def __init__(self, window: float = RATE_WINDOW_SEC) -> None:
        self._samples: deque[tuple[float, int]] = deque()
        self._window = window

    def observe(self, now: float, count: int) -> None:
        samples = self._samples
        if samples and samples[-1][1] == count:
            return  # nothing new: the oldest sample keeps the window's start
        samples.append((now, count))
        # Keep one sample at or before the window's start, so the span covers the window.
        while len(samples) > 2 and samples[1][0] <= now - self._window:
            samples.popleft()

    def per_sec(self, now: float) -> float | None:
        samples = self._samples
        if len(samples) < 2:
            return None
        (t0, c0), (t1, c1) = samples[0], samples[-1]
        if now - t1 > self._window:
            return None  # nothing reported for a whole window: no honest estimate
        # The count stood at c0 from t0 until the next sample: from the window's start, at most.
        span = now - max(t0, now - self._window)
        if span < 1.0 or c1 <= c0:
            return None
        return (c1 - c0) / span


def seeded_rate(now: float, count: int, recent: int, window: float = RATE_WINDOW_SEC) -> FrameRate:
    """A rate that has seen ``recent`` of ``count`` frames over the last window (from storage)."""
    rate = FrameRate(window)
    rate.observe(now - window, count - recent)
    rate.observe(now, count)
    return rate
