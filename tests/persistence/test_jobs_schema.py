"""Invariants the schema itself carries for jobs."""

from uuid import uuid4

import asyncpg
import pytest

from tests.http.test_internal import make_job


async def test_a_failed_job_is_retried_at_most_once(db) -> None:
    owner = uuid4()
    failed = await make_job(db, owner)
    project = await db.fetchval("SELECT saved_project_id FROM render_jobs WHERE id = $1", failed)
    insert = (
        "INSERT INTO render_jobs (id, user_id, saved_project_id, project_version, name, "
        "priority_queue, price_type, quality, resolution, frame_rate, duration_sec, end_frame, "
        "retry_of_job_id) VALUES ($1, $2, $3, 1, 'P', 'Cash', 'Cash', 'High', 'FullHD', 30, 3.0, "
        "89, $4)"
    )
    await db.execute(insert, uuid4(), owner, project, failed)
    with pytest.raises(asyncpg.UniqueViolationError):
        await db.execute(insert, uuid4(), owner, project, failed)
