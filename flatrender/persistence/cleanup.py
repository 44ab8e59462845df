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
LOCK_IDLE_REPLICAS = """
SELECT r.saved_project_id, r.project_version, r.storage_key FROM replicas r
WHERE r.created_at < $1
  AND NOT EXISTS (
      SELECT 1 FROM render_jobs j
      WHERE j.saved_project_id = r.saved_project_id AND j.project_version = r.project_version
        AND (j.step NOT IN ('Completed', 'Failed', 'Cancelled')
             OR COALESCE(j.completed_at, j.queued_at) >= $1))
ORDER BY r.created_at LIMIT $2
FOR UPDATE OF r SKIP LOCKED
"""


async def lock_idle_replicas(conn: Connection, cutoff: datetime, limit: int) -> list[IdleReplica]:
    """Up to ``limit`` idle replicas as of ``cutoff``, locked for the caller's transaction."""
    records = await conn.fetch(LOCK_IDLE_REPLICAS, cutoff, limit)
    return [
        IdleReplica(r["saved_project_id"], r["project_version"], r["storage_key"]) for r in records
    ]


DELETE_REPLICA = "DELETE FROM replicas WHERE saved_project_id = $1 AND project_version = $2"


async def delete_replicas(conn: Connection, replicas: Sequence[IdleReplica]) -> None:
    for r in replicas:
        await conn.execute(DELETE_REPLICA, r.saved_project_id, r.project_version)


KNOWN_REPLICA_KEYS = "SELECT storage_key FROM replicas WHERE storage_key = ANY($1::text[])"


async def known_replica_keys(db: Database, keys: Sequence[str]) -> set[str]:
    """The keys among ``keys`` that a replica row names."""
    return {r["storage_key"] for r in await db.fetch(KNOWN_REPLICA_KEYS, list(keys))}
