"""What the Reaper needs to know about render leftovers: segments and replicas (DESIGN §7).

A render's segments (``renders/{job_id}/...``) are needed until its job is terminal; a replica
(``replicas/{project}/{version}.aep``) until no job of that project version is running or
recently finished. These reads say which ones are past that, as of an instant the caller gives.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from uuid import UUID

import attrs

from flatrender.persistence.db import Connection, Database


@attrs.frozen
class JobEnd:
    """When a job that owns segments stopped needing them; None while it still does."""

    job_id: UUID
    done_at: datetime | None


JOB_ENDS = """
SELECT id, CASE WHEN step IN ('Completed', 'Failed', 'Cancelled')
                THEN COALESCE(completed_at, queued_at) END AS done_at
FROM render_jobs WHERE id = ANY($1::uuid[])
"""


async def job_ends(db: Database, job_ids: Sequence[UUID]) -> dict[UUID, JobEnd]:
    """The jobs among ``job_ids`` that exist; an id absent from the answer has no job row."""
    records = await db.fetch(JOB_ENDS, list(job_ids))
    return {r["id"]: JobEnd(r["id"], r["done_at"]) for r in records}


@attrs.frozen
class IdleReplica:
    saved_project_id: UUID
    project_version: int
    storage_key: str


# A replica is idle when it is older than the cut-off and every job of its project version is
# terminal since before the cut-off. Locked (SKIP LOCKED) so two Reapers never race on one.
_NO_LIVE_JOB = """
NOT EXISTS (
    SELECT 1 FROM render_jobs j
    WHERE j.saved_project_id = r.saved_project_id AND j.project_version = r.project_version
      AND (j.step NOT IN ('Completed', 'Failed', 'Cancelled')
           OR COALESCE(j.completed_at, j.queued_at) >= $1))
"""
LOCK_IDLE_REPLICAS = f"""
SELECT r.saved_project_id, r.project_version, r.storage_key FROM replicas r
WHERE r.created_at < $1 AND {_NO_LIVE_JOB}
ORDER BY r.created_at LIMIT $2
FOR UPDATE OF r SKIP LOCKED
"""
# The same test again once the rows are locked, in a statement of its own: READ COMMITTED gives
# it a fresh snapshot, so a job committed while the lock was being taken is seen and keeps its
# replica. A job committed after this statement reads the replica FOR SHARE, which waits for the
# Reaper's transaction and then finds the row gone (it rebuilds).
STILL_IDLE = f"""
SELECT r.saved_project_id, r.project_version FROM replicas r
WHERE (r.saved_project_id, r.project_version) IN (
    SELECT * FROM unnest($2::uuid[], $3::int[])) AND {_NO_LIVE_JOB}
"""


async def lock_idle_replicas(conn: Connection, cutoff: datetime, limit: int) -> list[IdleReplica]:
    """Up to ``limit`` idle replicas as of ``cutoff``, locked for the caller's transaction."""
    records = await conn.fetch(LOCK_IDLE_REPLICAS, cutoff, limit)
    locked = [
        IdleReplica(r["saved_project_id"], r["project_version"], r["storage_key"]) for r in records
    ]
    return await still_idle(conn, cutoff, locked) if locked else []


async def still_idle(
    conn: Connection, cutoff: datetime, replicas: Sequence[IdleReplica]
) -> list[IdleReplica]:
    """Those of ``replicas`` (locked by the caller) that no job has needed since ``cutoff``,
    as seen now: a job submitted since they were picked keeps its replica."""
    records = await conn.fetch(
        STILL_IDLE,
        cutoff,
        [r.saved_project_id for r in replicas],
        [r.project_version for r in replicas],
    )
    idle = {(r["saved_project_id"], r["project_version"]) for r in records}
    return [r for r in replicas if (r.saved_project_id, r.project_version) in idle]


DELETE_REPLICA = "DELETE FROM replicas WHERE saved_project_id = $1 AND project_version = $2"


async def delete_replicas(conn: Connection, replicas: Sequence[IdleReplica]) -> None:
    for r in replicas:
        await conn.execute(DELETE_REPLICA, r.saved_project_id, r.project_version)


# A key is in use when a replica row names it, or when a job of the project version its key
# names is not terminal: a node may be uploading (or have just uploaded) a build to it.
REPLICA_KEYS_IN_USE = """
SELECT k.key FROM unnest($1::text[], $2::uuid[], $3::int[]) AS k(key, project, version)
WHERE EXISTS (SELECT 1 FROM replicas r WHERE r.storage_key = k.key)
   OR EXISTS (
       SELECT 1 FROM render_jobs j
       WHERE j.saved_project_id = k.project AND j.project_version = k.version
         AND j.step NOT IN ('Completed', 'Failed', 'Cancelled'))
"""


async def replica_keys_in_use(
    db: Database, keys: Sequence[tuple[str, UUID | None, int | None]]
) -> set[str]:
    """The keys among ``(key, project, version)`` that a replica row names or that a live job
    of that project version may be building (project and version None: a key of no job)."""
    records = await db.fetch(
        REPLICA_KEYS_IN_USE, [k for k, _, _ in keys], [p for _, p, _ in keys], [v for *_, v in keys]
    )
    return {r["key"] for r in records}
