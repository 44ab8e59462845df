"""A job actor's state in PostgreSQL: load it whole, save what a decision changed.

``save`` writes the job row (compare-and-set on ``revision``), every range that changed, the
frames newly reported, and the decision's log lines, inside the caller's transaction, so a
decision is committed whole or not at all (DESIGN §2.1).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from datetime import datetime
from uuid import UUID

from flatrender.domain import job_steps as js
from flatrender.domain.progress import percent
from flatrender.persistence import jobs, snapshots
from flatrender.persistence.db import Connection, Database


class ConcurrentUpdate(Exception):
    """The job row changed under us: another daemon owns this job now."""


REPORTED = (
    "SELECT frame_job_id, frame_number FROM frame_reports WHERE frame_job_id = ANY($1::uuid[])"
)


REPLICA_NODE = "SELECT replica_node_id FROM render_jobs WHERE id = $1"
TRIMS = """
SELECT id, trim_original_end, trim_tail_id FROM frame_jobs
WHERE job_id = $1 AND trim_tail_id IS NOT NULL
"""


async def load(db: Database | Connection, job_id: UUID) -> tuple[jobs.JobRow, js.JobState] | None:
    row = await jobs.get_job(db, job_id)
    if row is None:
        return None
    ranges = await jobs.frame_jobs(db, job_id)
    reported: dict[UUID, set[int]] = defaultdict(set)
    for r in await db.fetch(REPORTED, [f.id for f in ranges]):
        reported[r["frame_job_id"]].add(r["frame_number"])
    replica_node = await db.fetchval(REPLICA_NODE, job_id)
    trims = {
        r["id"]: js.Trim(r["trim_original_end"], r["trim_tail_id"])
        for r in await db.fetch(TRIMS, job_id)
    }
    state = js.JobState(
        job_id=row.id,
        start_frame=row.start_frame,
        end_frame=row.end_frame,
        step=js.JobStep(row.step),
        paid_minor=row.paid_price_minor,
        ranges=tuple(
            js.RangeState(
                id=f.id,
                start_frame=f.start_frame,
                end_frame=f.end_frame,
                status=js.RangeStatus(f.status),
                node_id=f.node_id,
                attempt=f.attempt,
                reported_frames=frozenset(reported[f.id]),
                last_error=f.last_error,
                replaces_id=f.replaces_id,
                trim=trims.get(f.id),
            )
            for f in ranges
        ),
        replica_key=row.replica_key,
        replica_node_id=replica_node,
        export_id=row.export_id,
        failed_message=row.failed_message,
        repair_attempts=row.repair_attempts,
        snapshot=row.kind == "Snapshot",
    )
    return row, state


SAVE_JOB = """
UPDATE render_jobs SET step = $3, replica_key = $4, replica_node_id = $5, export_id = $6,
    failed_message = $7, repair_attempts = $8, render_progress = $9,
    started_at = CASE WHEN $3 IN ('Preparing', 'Rendering') THEN COALESCE(started_at, $10)
                      ELSE started_at END,
    completed_at = CASE WHEN $3 IN ('Completed', 'Failed', 'Cancelled')
                        THEN COALESCE(completed_at, $10) ELSE completed_at END,
    revision = revision + 1
WHERE id = $1 AND revision = $2
RETURNING revision
"""
UPSERT_RANGE = """
INSERT INTO frame_jobs (id, job_id, node_id, start_frame, end_frame, order_value, status,
    frames_rendered, frames_validated, attempt, last_error, output_key, replaces_id, assigned_at,
    rendered_at, validated_at, trim_original_end, trim_tail_id)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13,
    CASE WHEN $7 = 'Assigned' THEN $14::timestamptz END,
    CASE WHEN $7 = 'Rendered' THEN $14::timestamptz END,
    CASE WHEN $7 = 'Validated' THEN $14::timestamptz END, $15, $16)
ON CONFLICT (id) DO UPDATE SET node_id = EXCLUDED.node_id, end_frame = EXCLUDED.end_frame,
    trim_original_end = EXCLUDED.trim_original_end, trim_tail_id = EXCLUDED.trim_tail_id,
    status = EXCLUDED.status, frames_rendered = EXCLUDED.frames_rendered,
    frames_validated = EXCLUDED.frames_validated, last_error = EXCLUDED.last_error,
    assigned_at = COALESCE(EXCLUDED.assigned_at, frame_jobs.assigned_at),
    rendered_at = COALESCE(EXCLUDED.rendered_at, frame_jobs.rendered_at),
    validated_at = COALESCE(EXCLUDED.validated_at, frame_jobs.validated_at)
"""
INSERT_REPORT = """
INSERT INTO frame_reports (frame_job_id, frame_number, node_id, file_size_bytes, completed_at)
VALUES ($1, $2, $3, $4, $5) ON CONFLICT DO NOTHING
"""


# A frame report row: (frame_job_id, frame_number, node_id, file_size_bytes, completed_at).
FrameReport = tuple[UUID, int, UUID, int | None, datetime | None]


def replica_key(saved_project_id: UUID, project_version: int) -> str:
    """The key a job's PrepareReplica hands its node, the only one its replica-ready may name."""
    return f"replicas/{saved_project_id}/{project_version}.aep"


def output_key(job_id: UUID, range_id: UUID, output_format: str) -> str:
    if output_format == "png":
        # Only a snapshot's job renders a PNG, and it has the snapshot's id. Each attempt has
        # its own key: a fenced attempt's late upload cannot replace the validated image.
        return snapshots.attempt_key(job_id, range_id)
    return f"renders/{job_id}/{range_id}.{output_format}"


def progress(state: js.JobState) -> int:
    """Percent of frames reported by the current ranges (validated ones count whole)."""
    return percent(state)


async def save(
    conn: Connection,
    revision: int,
    old: js.JobState,
    new: js.JobState,
    output_format: str,
    now: datetime,
    reports: Sequence[FrameReport] = (),
) -> int:
    """Write what changed from ``old`` to ``new``; returns the job row's new revision."""
    new_revision = await conn.fetchval(
        SAVE_JOB,
        new.job_id,
        revision,
        new.step.value,
        new.replica_key,
        new.replica_node_id,
        new.export_id,
        new.failed_message,
        new.repair_attempts,
        progress(new),
        now,
    )
    if new_revision is None:
        raise ConcurrentUpdate(f"job {new.job_id} changed under this actor")
    before = {r.id: r for r in old.ranges}
    changed = [
        (
            r.id,
            new.job_id,
            r.node_id,
            r.start_frame,
            r.end_frame,
            r.order_value,
            r.status.value,
            r.frames_rendered,
            r.frames_validated,
            r.attempt,
            r.last_error,
            output_key(new.job_id, r.id, output_format),
            r.replaces_id,
            now,
            None if r.trim is None else r.trim.original_end,
            None if r.trim is None else r.trim.tail_id,
        )
        for r in new.ranges
        if before.get(r.id) != r
    ]
    if changed:
        await conn.executemany(UPSERT_RANGE, changed)  # one round trip for them all
    if reports:
        await conn.executemany(INSERT_REPORT, reports)
    return int(new_revision)
