"""A job's RenderProgress inputs as PostgreSQL has them: for finished jobs, and to seed a topic."""

from __future__ import annotations

from uuid import UUID

from flatrender.domain.progress import RATE_WINDOW_SEC, ProgressInputs
from flatrender.persistence import job_state, jobs
from flatrender.persistence.db import Connection, Database

RECENT_REPORTS = """
SELECT count(*) FROM frame_reports r JOIN frame_jobs f ON f.id = r.frame_job_id
WHERE f.job_id = $1 AND r.received_at > now() - make_interval(secs => $2)
"""


OWNER = "SELECT user_id FROM render_jobs WHERE id = $1 AND kind = 'Render'"


async def owner(db: Database | Connection, job_id: UUID) -> UUID | None:
    """The render job's owner; None when there is no such render job."""
    value = await db.fetchval(OWNER, job_id)
    return None if value is None else UUID(str(value))


async def load(
    db: Database | Connection, job_id: UUID
) -> tuple[jobs.JobRow, ProgressInputs, int] | None:
    """The job row, its progress inputs and the frames reported within the rate window."""
    loaded = await job_state.load(db, job_id)
    if loaded is None:
        return None
    row, state = loaded
    recent = 0
    if not state.terminal:
        recent = int(await db.fetchval(RECENT_REPORTS, job_id, RATE_WINDOW_SEC))
    inputs = ProgressInputs(state, row.revision, row.image_preview_b64, row.cancel_reason)
    return row, inputs, recent
