from __future__ import annotations

from datetime import UTC, datetime
from uuid import uuid4

import pytest

from flatrender.domain import notify


def test_event_names_follow_the_terminal_step() -> None:
    assert notify.event_name("Completed") == "render.completed"
    assert notify.event_name("Failed") == "render.failed"
    assert notify.event_name("Cancelled") == "render.cancelled"


def test_payload_carries_the_export_and_the_reason() -> None:
    job, user, export = uuid4(), uuid4(), uuid4()
    ended = datetime(2026, 11, 29, 12, 0, tzinfo=UTC)
    payload = notify.job_end_payload(
        job_id=job,
        user_id=user,
        name="Promo",
        step="Completed",
        export_id=export,
        message=None,
        ended_at=ended,
    )
    assert payload == {
        "event": "render.completed",
        "job_id": str(job),
        "user_id": str(user),
        "name": "Promo",
        "step": "Completed",
        "export_id": str(export),
        "message": None,
        "ended_at": "2026-11-29T12:00:00+00:00",
    }


@pytest.mark.parametrize(
    ("attempts", "delay"), [(0, 0.0), (1, 10.0), (2, 20.0), (3, 40.0), (8, 1280.0), (9, 2000.0)]
)
def test_retry_delay_doubles_up_to_the_cap(attempts: int, delay: float) -> None:
    assert notify.retry_delay(attempts, base_sec=10, max_sec=2000) == delay


def test_retry_delay_survives_absurd_attempt_counts() -> None:
    assert notify.retry_delay(10_000, base_sec=10, max_sec=3600) == 3600


@pytest.mark.parametrize(
    ("status", "ok"),
    [(200, True), (204, True), (299, True), (301, False), (404, False), (500, False), (503, False)],
)
def test_only_2xx_is_a_delivery(status: int, ok: bool) -> None:
    assert notify.delivered(status) is ok
