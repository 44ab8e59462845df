"""The RenderProgress builder and the observed frame rate, without I/O."""

from __future__ import annotations

import json
from uuid import uuid4

import attrs

from flatrender.domain.job_state import JobState, JobStep, RangeState, RangeStatus
from flatrender.domain.progress import (
    FrameRate,
    ProgressInputs,
    build,
    percent,
    seeded_rate,
)

NODE_A, NODE_B = uuid4(), uuid4()


def rendering_job() -> JobState:
    """300 frames: one range validated, one rendering on A (10 frames in), one pending."""
    return JobState(
        job_id=uuid4(),
        start_frame=0,
        end_frame=299,
        step=JobStep.RENDERING,
        ranges=(
            RangeState(
                uuid4(), 0, 99, RangeStatus.VALIDATED, NODE_B, reported_frames=frozenset(range(100))
            ),
            RangeState(
                uuid4(),
                100,
                199,
                RangeStatus.RENDERING,
                NODE_A,
                reported_frames=frozenset(range(100, 110)),
            ),
            RangeState(uuid4(), 200, 299, RangeStatus.ASSIGNED, NODE_B),
        ),
    )


def test_rendering_job_progress_counts_validated_ranges_whole_and_reported_frames() -> None:
    state = rendering_job()
    progress = build(ProgressInputs(state, 7, "png", None), frames_per_sec=19.0)
    assert progress.to_json() == {
        "job_id": str(state.job_id),
        "step": "Rendering",
        "progress": 36,  # 110 of 300
        "current_frame": 109,
        "total_frames": 300,
        "eta_seconds": 10,  # 190 frames left at 19 a second
        "preview_b64": "png",
        "active_nodes": 2,
        "message": None,
    }


def test_no_eta_without_an_observed_rate_nor_in_a_terminal_step() -> None:
    state = rendering_job()
    assert build(ProgressInputs(state, 1), None).eta_seconds is None
    failed = attrs.evolve(state, step=JobStep.FAILED, failed_message="boom")
    progress = build(ProgressInputs(failed, 2), 19.0)
    assert (progress.eta_seconds, progress.active_nodes, progress.message) == (None, 0, "boom")
    assert progress.terminal


def test_only_completed_is_a_hundred_percent() -> None:
    state = rendering_job()
    done = attrs.evolve(
        state,
        ranges=tuple(
            attrs.evolve(r, status=RangeStatus.VALIDATED, reported_frames=frozenset())
            for r in state.ranges
        ),
    )
    assert percent(done) == 99  # merging still to do
    assert percent(attrs.evolve(done, step=JobStep.COMPLETED)) == 100


def test_a_queued_job_has_nothing_to_show() -> None:
    state = JobState(job_id=uuid4(), start_frame=0, end_frame=29)
    assert build(ProgressInputs(state, 1), None).to_json() == {
        "job_id": str(state.job_id),
        "step": "Queued",
        "progress": 0,
        "current_frame": None,
        "total_frames": 30,
        "eta_seconds": None,
        "preview_b64": None,
        "active_nodes": 0,
        "message": None,
    }


def test_encode_is_the_json_of_to_json() -> None:
    progress = build(ProgressInputs(rendering_job(), 1), 2.0)
    assert json.loads(progress.encode()) == progress.to_json()


def test_frame_rate_over_the_window() -> None:
    rate = FrameRate(window=30.0)
    assert rate.per_sec(0.0) is None
    rate.observe(0.0, 0)
    for second in range(1, 61):
        rate.observe(float(second), second * 10)
    assert rate.per_sec(60.0) == 10.0
    # Nothing for a whole window: no estimate rather than a stale one.
    assert rate.per_sec(95.0) is None


def test_frame_rate_ignores_an_idle_start_before_the_window() -> None:
    rate = FrameRate(window=30.0)
    rate.observe(0.0, 0)  # queued for a long time
    rate.observe(100.0, 30)
    rate.observe(110.0, 130)
    # The count stood at 0 until t=100: over the window ending at 110, 130 frames in 30 s.
    assert rate.per_sec(110.0) == 130 / 30


def test_seeded_rate_is_the_recent_count_over_the_window() -> None:
    assert seeded_rate(500.0, 400, 90).per_sec(500.0) == 3.0
    assert seeded_rate(500.0, 400, 0).per_sec(500.0) is None
