"""Render jobs, their frame ranges, frame reports and logs."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any
from uuid import UUID

import attrs

from flatrender.persistence.db import Connection, Database

TERMINAL_STEPS = ("Completed", "Failed", "Cancelled")


@attrs.frozen
class JobRow:
    id: UUID
    user_id: UUID
    kind: str
    saved_project_id: UUID
    project_version: int
    name: str
    step: str
    render_progress: int
    priority_queue: str
    price_type: str
    paid_price_minor: int
    quality: str
    resolution: str
    frame_rate: int
    duration_sec: float
    has_voiceover: bool
    start_frame: int
    end_frame: int
    output_format: str
    image_preview_b64: str | None
    failed_message: str | None
    export_id: UUID | None
    discount_code: str | None
    support_flatrender: bool
    tell_me_when_done: bool
    preferred_region: str | None
    retry_of_job_id: UUID | None
    retry_count: int
    repair_attempts: int
    replica_key: str | None
    cancel_reason: str | None
    queued_at: datetime
    started_at: datetime | None
    completed_at: datetime | None
    revision: int

    @property
    def total_frames(self) -> int:
        return self.end_frame - self.start_frame + 1

    @property
    def terminal(self) -> bool:
        return self.step in TERMINAL_STEPS


@attrs.frozen
class FrameJobRow:
    id: UUID
    job_id: UUID
    node_id: UUID | None
    start_frame: int
    end_frame: int
    order_value: int
    status: str
    frames_rendered: int
    frames_validated: int
    attempt: int
    last_error: str | None
    output_key: str | None
    replaces_id: UUID | None
    created_at: datetime
    assigned_at: datetime | None
    rendered_at: datetime | None
    validated_at: datetime | None


@attrs.frozen
class NewJob:
    """Everything a submit (or a retry) decides before the job row exists."""

    id: UUID
    user_id: UUID
    saved_project_id: UUID
    project_version: int
    name: str
    priority_queue: str
    price_type: str
    paid_price_minor: int
    quality: str
    resolution: str
    frame_rate: int
    duration_sec: float
    has_voiceover: bool
    end_frame: int
    discount_code: str | None
    support_flatrender: bool
    tell_me_when_done: bool
    preferred_region: str | None
    retry_of_job_id: UUID | None = None
    retry_count: int = 0
    kind: str = "Render"
    output_format: str = "mp4"
    start_frame: int = 0  # a snapshot's job renders frame end_frame alone


def _fields(cls: type) -> list[str]:
    return [f.name for f in attrs.fields(cls)]


def job_from(record: Any) -> JobRow:
    data = dict(record)
    return JobRow(**{name: data[name] for name in _fields(JobRow)})


def frame_job_from(record: Any) -> FrameJobRow:
    data = dict(record)
    return FrameJobRow(**{name: data[name] for name in _fields(FrameJobRow)})


_NEW_COLUMNS = _fields(NewJob)
INSERT_JOB = (
    f"INSERT INTO render_jobs ({', '.join(_NEW_COLUMNS)}) "
    f"VALUES ({', '.join(f'${i}' for i in range(1, len(_NEW_COLUMNS) + 1))}) RETURNING *"
)


async def insert_job(conn: Connection, job: NewJob) -> JobRow:
    record = await conn.fetchrow(INSERT_JOB, *(getattr(job, name) for name in _NEW_COLUMNS))
    return job_from(record)


async def get_job(db: Database | Connection, job_id: UUID) -> JobRow | None:
    record = await db.fetchrow("SELECT * FROM render_jobs WHERE id = $1", job_id)
    return None if record is None else job_from(record)


LIST_JOBS = """
SELECT *, count(*) OVER () AS total FROM render_jobs
WHERE ($1::uuid IS NULL OR user_id = $1) AND kind = 'Render' AND ($2::text IS NULL OR step = $2)
ORDER BY queued_at DESC, id
LIMIT $3 OFFSET $4
"""


async def list_jobs(
    db: Database, user_id: UUID | None, step: str | None, limit: int, offset: int
) -> tuple[list[JobRow], int]:
    """A page of render jobs, newest first: ``user_id``'s, or everyone's when None."""
    records = await db.fetch(LIST_JOBS, user_id, step, limit, offset)
    total = int(records[0]["total"]) if records else await _count(db, user_id, step)
    return [job_from(r) for r in records], total


async def _count(db: Database, user_id: UUID | None, step: str | None) -> int:
    return int(
        await db.fetchval(
            "SELECT count(*) FROM render_jobs WHERE ($1::uuid IS NULL OR user_id = $1) "
            "AND kind = 'Render' "
            "AND ($2::text IS NULL OR step = $2)",
            user_id,
            step,
        )
    )


async def frame_jobs(db: Database | Connection, job_id: UUID) -> list[FrameJobRow]:
    records = await db.fetch(
        "SELECT * FROM frame_jobs WHERE job_id = $1 ORDER BY order_value, attempt", job_id
    )
    return [frame_job_from(r) for r in records]


INSERT_LOG = """
INSERT INTO job_logs (job_id, level, node_id, message, meta) VALUES ($1, $2, $3, $4, $5)
"""


async def log_many(
    conn: Connection | Database, job_id: UUID, lines: Sequence[tuple[str, str, UUID | None]]
) -> None:
    """Several ``(level, message, node_id)`` log lines in one round trip."""
    await conn.executemany(
        INSERT_LOG, [(job_id, level, node_id, message, {}) for level, message, node_id in lines]
    )


async def log(
    conn: Connection | Database,
    job_id: UUID,
    level: str,
    message: str,
    *,
    node_id: UUID | None = None,
    meta: dict[str, Any] | None = None,
) -> None:
    await conn.execute(INSERT_LOG, job_id, level, node_id, message, meta or {})


LOGS = """
SELECT timestamp, level, node_id, message, meta FROM job_logs
WHERE job_id = $1 AND level = ANY($2::text[]) ORDER BY id LIMIT $3
"""
LEVELS = ("debug", "info", "warn", "error")


async def logs(db: Database, job_id: UUID, min_level: str, limit: int = 1000) -> list[Any]:
    """Log lines at ``min_level`` or above, oldest first."""
    levels = list(LEVELS[LEVELS.index(min_level) :])
    return list(await db.fetch(LOGS, job_id, levels, limit))


async def discount_used(conn: Connection, user_id: UUID, code: str) -> bool:
    return bool(
        await conn.fetchval(
            "SELECT 1 FROM discount_redemptions WHERE user_id = $1 AND code = $2", user_id, code
        )
    )


async def redeem_discount(conn: Connection, user_id: UUID, code: str, job_id: UUID) -> None:
    await conn.execute(
        "INSERT INTO discount_redemptions (user_id, code, job_id) VALUES ($1, $2, $3)",
        user_id,
        code,
        job_id,
    )
