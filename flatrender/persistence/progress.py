"""A job's RenderProgress inputs as PostgreSQL has them: for finished jobs, and to seed a topic.

A finished job (the poll and the connect of a job the hub no longer remembers) is read in two
light queries: its row, and per current range a count and a maximum over its frame reports. A
job still running is loaded whole (its state seeds the hub's topic, which the actor then owns).
Both end in the same builder (:func:`flatrender.domain.progress.build_from`).
"""

from __future__ import annotations

from uuid import UUID

import attrs

from flatrender.domain.job_state import TERMINAL_STEPS, JobStep, RangeStatus
from flatrender.domain.progress import (
    RATE_WINDOW_SEC,
    FrameRate,
    ProgressFacts,
    ProgressInputs,
    RangeFacts,
    RenderProgress,
    build_from,
    facts,
    frames_reported,
    seeded_rate,
)
from flatrender.persistence import job_state
from flatrender.persistence.db import Connection, Database

RECENT_REPORTS = """
SELECT count(*) FROM frame_reports r JOIN frame_jobs f ON f.id = r.frame_job_id
WHERE f.job_id = $1 AND r.received_at > now() - make_interval(secs => $2)
"""
JOB = """
SELECT step, start_frame, end_frame, image_preview_b64, cancel_reason, failed_message
FROM render_jobs WHERE id = $1
"""
CURRENT_RANGES = """
SELECT f.status, f.start_frame, f.end_frame, f.node_id,
       count(r.frame_number) AS reported, max(r.frame_number) AS last_reported
FROM frame_jobs f LEFT JOIN frame_reports r ON r.frame_job_id = f.id
WHERE f.job_id = $1 AND f.status <> 'Failed'
GROUP BY f.id
"""


OWNER = "SELECT user_id FROM render_jobs WHERE id = $1 AND kind = 'Render'"


async def owner(db: Database | Connection, job_id: UUID) -> UUID | None:
    """The render job's owner; None when there is no such render job."""
    value = await db.fetchval(OWNER, job_id)
    return None if value is None else UUID(str(value))


@attrs.frozen
class Stored:
    """A job's progress as stored: its facts, and for a job still running its whole inputs (to
    seed the hub) and the frames reported within the rate window."""

    facts: ProgressFacts
    seed: ProgressInputs | None = None  # None once the job is finished
    recent: int = 0

    def rate(self, now: float) -> FrameRate | None:
        if self.seed is None:
            return None  # a finished job has no ETA
        return seeded_rate(now, frames_reported(self.seed.state), self.recent)

    def progress(self, now: float) -> RenderProgress:
        rate = self.rate(now)
        return build_from(self.facts, None if rate is None else rate.per_sec(now))


async def load(db: Database | Connection, job_id: UUID) -> Stored | None:
    """None when there is no such job."""
    row = await db.fetchrow(JOB, job_id)
    if row is None:
        return None
    step = JobStep(row["step"])
    if step in TERMINAL_STEPS:
        ranges = [
            RangeFacts(
                status=RangeStatus(r["status"]),
                frame_count=r["end_frame"] - r["start_frame"] + 1,
                reported=int(r["reported"]),
                last_reported=r["last_reported"],
                node_id=r["node_id"],
            )
            for r in await db.fetch(CURRENT_RANGES, job_id)
        ]
        return Stored(
            ProgressFacts(
                job_id=job_id,
                step=step,
                total_frames=row["end_frame"] - row["start_frame"] + 1,
                ranges=tuple(ranges),
                preview_b64=row["image_preview_b64"],
                message=row["cancel_reason"] or row["failed_message"],
            )
        )
    return await load_whole(db, job_id)


async def load_whole(db: Database | Connection, job_id: UUID) -> Stored | None:
    """The job's whole state (five queries and every frame report): to seed a running job."""
    loaded = await job_state.load(db, job_id)
    if loaded is None:
        return None
    row, state = loaded
    recent = 0
    if not state.terminal:
        recent = int(await db.fetchval(RECENT_REPORTS, job_id, RATE_WINDOW_SEC))
    inputs = ProgressInputs(state, row.revision, row.image_preview_b64, row.cancel_reason)
    return Stored(facts(inputs), inputs, recent)
