"""Job-end notifications (DESIGN §6 ``tell_me_when_done``): what is sent, and when to try again.

The orchestrator writes one outbox row per ended job in the transaction that ends it; the
Notifier delivers it to the configured webhook, at least once: a receiver deduplicates by
``notification_id`` (or by ``job_id`` and ``event``, which are unique together).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any
from uuid import UUID

SIGNATURE_HEADER = "X-Flatrender-Signature"


def event_name(step: str) -> str:
    """``render.completed``, ``render.failed`` or ``render.cancelled`` for a terminal step."""
    return f"render.{step.lower()}"


def job_end_payload(
    *,
    job_id: UUID,
    user_id: UUID,
    name: str,
    step: str,
    export_id: UUID | None,
    message: str | None,
    ended_at: datetime,
) -> dict[str, Any]:
    """The webhook body's fields (``notification_id`` is added once the row has its id)."""
    return {
        "event": event_name(step),
        "job_id": str(job_id),
        "user_id": str(user_id),
        "name": name,
        "step": step,
        "export_id": None if export_id is None else str(export_id),
        "message": message,
        "ended_at": ended_at.isoformat(),
    }


def retry_delay(attempts: int, *, base_sec: float, max_sec: float) -> float:
    """Seconds before the next try after ``attempts`` failed ones: doubling from ``base_sec``,
    capped at ``max_sec``."""
    if attempts < 1:
        return 0.0
    return float(min(max_sec, base_sec * 2 ** min(attempts - 1, 30)))


def delivered(status_code: int) -> bool:
    """Any 2xx is a delivery; everything else (3xx included: we do not follow) is retried."""
    return 200 <= status_code < 300
