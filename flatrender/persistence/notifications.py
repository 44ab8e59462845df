"""The notification outbox: written with a job's end, drained by the Notifier."""

from __future__ import annotations

from datetime import datetime
from typing import Any
from uuid import UUID

import attrs

from flatrender.persistence.db import Connection, Database

ENQUEUE = """
INSERT INTO notification_outbox (job_id, user_id, event, payload, next_attempt_at)
VALUES ($1, $2, $3, $4, $5)
ON CONFLICT (job_id, event) DO NOTHING
"""


async def enqueue(
    conn: Connection, job_id: UUID, user_id: UUID, payload: dict[str, Any], now: datetime
) -> None:
    """Record a notification; a second one for the same job and event is ignored."""
    await conn.execute(ENQUEUE, job_id, user_id, payload["event"], payload, now)


@attrs.frozen
class Pending:
    id: int
    job_id: UUID
    event: str
    payload: dict[str, Any]
    attempts: int


DUE = """
SELECT id, job_id, event, payload, attempts FROM notification_outbox
WHERE delivered_at IS NULL AND next_attempt_at <= $1 AND attempts < $2
ORDER BY next_attempt_at, id
LIMIT $3
"""


async def due(db: Database, now: datetime, max_attempts: int, limit: int) -> list[Pending]:
    """Undelivered notifications whose time has come and whose attempts are not spent."""
    rows = await db.fetch(DUE, now, max_attempts, limit)
    return [Pending(r["id"], r["job_id"], r["event"], r["payload"], r["attempts"]) for r in rows]


DELIVERED = """
UPDATE notification_outbox SET delivered_at = $2, attempts = attempts + 1, last_error = NULL
WHERE id = $1 AND delivered_at IS NULL
"""


async def mark_delivered(db: Database, notification_id: int, now: datetime) -> None:
    await db.execute(DELIVERED, notification_id, now)


FAILED = """
UPDATE notification_outbox SET attempts = attempts + 1, last_error = $2, next_attempt_at = $3
WHERE id = $1 AND delivered_at IS NULL
"""


async def mark_failed(
    db: Database, notification_id: int, error: str, next_attempt_at: datetime
) -> None:
    await db.execute(FAILED, notification_id, error[:500], next_attempt_at)


@attrs.frozen
class OutboxRow:
    id: int
    event: str
    payload: dict[str, Any]
    attempts: int
    delivered_at: datetime | None
    next_attempt_at: datetime
    last_error: str | None


FOR_JOB = """
SELECT id, event, payload, attempts, delivered_at, next_attempt_at, last_error
FROM notification_outbox WHERE job_id = $1 ORDER BY id
"""


async def for_job(db: Database, job_id: UUID) -> list[OutboxRow]:
    """A job's notifications, for operators and tests."""
    return [
        OutboxRow(
            r["id"],
            r["event"],
            r["payload"],
            r["attempts"],
            r["delivered_at"],
            r["next_attempt_at"],
            r["last_error"],
        )
        for r in await db.fetch(FOR_JOB, job_id)
    ]
