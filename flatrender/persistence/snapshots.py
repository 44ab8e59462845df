"""Snapshots: the cache of single rendered frames, keyed by (project version, scene, frame).

A snapshot's render job has the snapshot's own id. Each attempt of its one range uploads to a
key of its own (:func:`attempt_key`, ``snapshots/{snapshot_id}/{range_id}.png``), so the late
upload of a superseded (fenced) attempt can never overwrite the validated image; the row's
``image_key`` is set to the validated attempt's key when the snapshot is cached, and no copy is
ever made. Whatever else lies under ``snapshots/{snapshot_id}/`` is a superseded attempt. The
partial unique index ``snapshots_one_per_frame`` admits one live (Pending, Rendering, Cached)
snapshot per key: :func:`create` inserts with ``ON CONFLICT DO NOTHING`` and, when it loses,
answers the live row, so concurrent identical requests share one render.
"""

from __future__ import annotations

from collections.abc import Collection
from datetime import datetime
from typing import Any
from uuid import UUID

import attrs

from flatrender.persistence.db import Connection, Database


def prefix(snapshot_id: UUID) -> str:
    """Every object of the snapshot (its attempts, its thumbnail) lies under this prefix."""
    return f"snapshots/{snapshot_id}/"


def attempt_key(snapshot_id: UUID, range_id: UUID) -> str:
    """Where one attempt (frame range) of the snapshot's job uploads its PNG."""
    return f"{prefix(snapshot_id)}{range_id}.png"


def thumbnail_key(snapshot_id: UUID) -> str:
    return f"snapshots/{snapshot_id}/thumbnail.png"


@attrs.frozen
class SnapshotRow:
    id: UUID
    user_id: UUID
    saved_project_id: UUID
    project_version: int
    scene_key: str
    frame_number: int
    status: str
    job_id: UUID | None
    image_key: str | None
    thumbnail_key: str | None
    width: int | None
    height: int | None
    duration_ms: int | None
    requested_at: datetime
    completed_at: datetime | None
    expires_at: datetime


_COLUMNS = [f.name for f in attrs.fields(SnapshotRow)]


def row_from(record: Any, prefix: str = "") -> SnapshotRow:
    return SnapshotRow(**{name: record[prefix + name] for name in _COLUMNS})


@attrs.frozen
class Lookup:
    """What a request needs to know, read in one query: the project, its scene, the live row."""

    owner_user_id: UUID
    name: str
    version: int
    frame_rate: int
    scene: tuple[int, int] | None  # the scene's first and last frame; None: no such scene
    live: SnapshotRow | None


_SNAP = ", ".join(f"s.{c} AS s_{c}" for c in _COLUMNS)
# One indexed query (catalog primary keys and snapshots_one_per_frame): the cached path reads
# nothing else before it presigns.
LOOKUP = f"""
SELECT p.owner_user_id, p.name, p.version, p.frame_rate, c.start_frame, c.end_frame, {_SNAP}
FROM catalog_projects p
LEFT JOIN catalog_scenes c ON c.saved_project_id = p.saved_project_id AND c.scene_key = $2
LEFT JOIN snapshots s ON s.saved_project_id = p.saved_project_id
    AND s.project_version = p.version AND s.scene_key = $2 AND s.frame_number = $3
    AND s.status IN ('Pending', 'Rendering', 'Cached')
WHERE p.saved_project_id = $1
"""


async def lookup(
    db: Database, saved_project_id: UUID, scene_key: str, frame_number: int
) -> Lookup | None:
    """None when the project does not exist."""
    r = await db.fetchrow(LOOKUP, saved_project_id, scene_key, frame_number)
    if r is None:
        return None
    return Lookup(
        owner_user_id=r["owner_user_id"],
        name=r["name"],
        version=r["version"],
        frame_rate=r["frame_rate"],
        scene=None if r["start_frame"] is None else (r["start_frame"], r["end_frame"]),
        live=None if r["s_id"] is None else row_from(r, "s_"),
    )


INSERT = """
INSERT INTO snapshots (id, user_id, saved_project_id, project_version, scene_key, frame_number,
    status, requested_at, expires_at)
VALUES ($1, $2, $3, $4, $5, $6, 'Pending', $7, $8)
ON CONFLICT (saved_project_id, project_version, scene_key, frame_number)
    WHERE status IN ('Pending', 'Rendering', 'Cached') DO NOTHING
RETURNING *
"""
LIVE = """
SELECT * FROM snapshots WHERE saved_project_id = $1 AND project_version = $2
    AND scene_key = $3 AND frame_number = $4 AND status IN ('Pending', 'Rendering', 'Cached')
"""
SET_JOB = "UPDATE snapshots SET job_id = $2 WHERE id = $1"


@attrs.frozen
class NewSnapshot:
    id: UUID
    user_id: UUID
    saved_project_id: UUID
    project_version: int
    scene_key: str
    frame_number: int
    requested_at: datetime
    expires_at: datetime


async def insert(conn: Connection, new: NewSnapshot) -> tuple[SnapshotRow, bool]:
    """The new row (True), or the live row that won the key (False), in the caller's
    transaction. A concurrent insert of the same key waits for the other transaction: if it
    commits, this one answers its row; if it rolls back, this one inserts."""
    key = (new.saved_project_id, new.project_version, new.scene_key, new.frame_number)
    record = await conn.fetchrow(
        INSERT,
        new.id,
        new.user_id,
        *key,
        new.requested_at,
        new.expires_at,
    )
    if record is not None:
        return row_from(record), True
    record = await conn.fetchrow(LIVE, *key)
    if record is None:  # the winner ended (Failed) between the two statements: rare, retry
        return await insert(conn, new)
    return row_from(record), False


async def set_job(conn: Connection, snapshot_id: UUID, job_id: UUID) -> None:
    await conn.execute(SET_JOB, snapshot_id, job_id)


# Index render_jobs_live_snapshots: a few rows per user at most.
LIVE_JOBS = """
SELECT count(*) FROM render_jobs
WHERE user_id = $1 AND kind = 'Snapshot' AND step NOT IN ('Completed', 'Failed', 'Cancelled')
"""


async def live_jobs(conn: Connection, user_id: UUID) -> int:
    """The user's snapshot jobs not yet ended. Exact only under the user's account lock, which
    every snapshot creation takes (a job ending meanwhile can only lower it)."""
    return int(await conn.fetchval(LIVE_JOBS, user_id))


GET = """
SELECT s.*, p.owner_user_id AS project_owner FROM snapshots s
JOIN catalog_projects p ON p.saved_project_id = s.saved_project_id WHERE s.id = $1
"""


async def get(db: Database, snapshot_id: UUID) -> tuple[SnapshotRow, UUID] | None:
    """The snapshot and its project's current owner."""
    record = await db.fetchrow(GET, snapshot_id)
    return None if record is None else (row_from(record), record["project_owner"])


# ------------------------------------------------------------------ the job's transitions

MARK_RENDERING = (
    "UPDATE snapshots SET status = 'Rendering' WHERE job_id = $1 AND status = 'Pending'"
)
MARK_CACHED = """
UPDATE snapshots SET status = 'Cached', width = $2, height = $3, completed_at = $4,
    duration_ms = GREATEST(0, floor(extract(epoch FROM ($4 - requested_at)) * 1000))::int,
    expires_at = $5, image_key = $6, thumbnail_key = $7
WHERE job_id = $1 AND status IN ('Pending', 'Rendering')
"""
MARK_FAILED = """
UPDATE snapshots SET status = 'Failed', completed_at = $2
WHERE job_id = $1 AND status IN ('Pending', 'Rendering')
"""


async def mark_rendering(conn: Connection, job_id: UUID) -> None:
    await conn.execute(MARK_RENDERING, job_id)


async def mark_cached(
    conn: Connection,
    job_id: UUID,
    width: int,
    height: int,
    now: datetime,
    expires: datetime,
    image: str,
    thumbnail: str,
) -> None:
    """Inside the transaction that completes the job (DESIGN §2.1); ``image`` is the validated
    attempt's key."""
    await conn.execute(MARK_CACHED, job_id, width, height, now, expires, image, thumbnail)


async def mark_failed(conn: Connection, job_id: UUID, now: datetime) -> None:
    await conn.execute(MARK_FAILED, job_id, now)


# ------------------------------------------------------------------ render deadline

OVERDUE = """
SELECT job_id FROM snapshots WHERE status IN ('Pending', 'Rendering') AND requested_at <= $1
    AND job_id IS NOT NULL
ORDER BY requested_at LIMIT $2
"""


async def overdue(db: Database, requested_before: datetime, limit: int) -> list[UUID]:
    """The jobs of the oldest snapshots still rendering that were requested before the given
    instant, at most ``limit``."""
    return [r["job_id"] for r in await db.fetch(OVERDUE, requested_before, limit)]


# ------------------------------------------------------------------ expiry

# A live render is never reaped under its job: Pending/Rendering rows end with their job.
EXPIRED = """
SELECT * FROM snapshots
WHERE expires_at <= $1 AND status IN ('Cached', 'Failed') AND id <> ALL($3::uuid[])
ORDER BY expires_at LIMIT $2
"""
DELETE = """
DELETE FROM snapshots WHERE id = ANY($1::uuid[]) AND expires_at <= $2
    AND status IN ('Cached', 'Failed')
"""


async def expired(
    db: Database, now: datetime, limit: int, *, skip: Collection[UUID] = ()
) -> list[SnapshotRow]:
    """Up to ``limit`` expired rows that no live render holds, oldest first, but those in
    ``skip``."""
    return [row_from(r) for r in await db.fetch(EXPIRED, now, limit, list(skip))]


async def delete_expired(db: Database, ids: list[UUID], now: datetime) -> int:
    """Delete the rows (their objects are gone already); returns how many."""
    result = await db.execute(DELETE, ids, now)
    return int(str(result).split()[-1])
