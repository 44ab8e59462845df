"""Node health history: reads for the admin API, retention and downsampling for the Reaper.

Owns no state. `node_health_samples` is written only by the HealthWriter actor (COPY in batches);
this module reads it and thins it. Every query walks the index
``node_health_samples_node_time (node_id, recorded_at DESC)`` one node at a time, never the whole
table: there is no index on ``recorded_at`` alone. Database outages raise `DatabaseUnavailable`;
each statement commits by itself, so a cancelled call keeps the batches already done.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID

import attrs

from flatrender.domain.model import HealthSample
from flatrender.persistence.db import Database

# The stored columns in HealthSample's field order (the table's order, minus `downsampled`).
SAMPLE_COLUMNS: tuple[str, ...] = tuple(field.name for field in attrs.fields(HealthSample))
_SELECT = ", ".join(SAMPLE_COLUMNS)

LATEST = f"""
SELECT {_SELECT} FROM node_health_samples
WHERE node_id = $1
ORDER BY recorded_at DESC
LIMIT 1
"""

# COALESCE keeps both bounds index conditions even in a generic (prepared) plan, where
# "$2 IS NULL OR recorded_at >= $2" would turn into a filter over the node's whole history.
HISTORY = f"""
SELECT {_SELECT} FROM node_health_samples
WHERE node_id = $1
  AND recorded_at >= COALESCE($2::timestamptz, '-infinity')
  AND recorded_at < COALESCE($3::timestamptz, 'infinity')
ORDER BY recorded_at DESC
LIMIT $4
"""

# At most $2 rows per statement, oldest first, taken node by node from the index (LATERAL; the
# ORDER BY makes it an index scan that stops at the LIMIT), so each statement's locks, WAL and
# run time stay bounded. A row whose ctid moved meanwhile (being marked
# downsampled) is skipped by the recheck and taken by the next round.
DELETE_OLDER_THAN = """
DELETE FROM node_health_samples
WHERE ctid = ANY(ARRAY(
    SELECT s.ctid
    FROM nodes n
    CROSS JOIN LATERAL (
        SELECT ctid FROM node_health_samples
        WHERE node_id = n.id AND recorded_at < $1
        ORDER BY recorded_at
        LIMIT $2
    ) s
    LIMIT $2
))
"""

NODE_PAGE = "SELECT id FROM nodes WHERE id > $1 ORDER BY id LIMIT $2"

# For the nodes in $1, over the whole buckets of length $3 that end before $2 (aligned):
# keep the latest sample of each bucket that holds a not-yet-downsampled sample, delete the rest,
# mark the kept one. Already-kept samples take part (and win ties), so samples that arrive late
# in a finished bucket still leave exactly one. The scan of each node starts at the bucket of its
# newest downsampled sample (found by a short backward index scan), not at the start of history:
# a steady-state run reads only the samples that aged since the previous run.
DOWNSAMPLE = """
WITH todo AS (
    SELECT t.node_id,
           COALESCE(date_bin($3::interval, w.recorded_at, 'epoch'), '-infinity')
               AS since
    FROM unnest($1::uuid[]) AS t(node_id)
    LEFT JOIN LATERAL (
        SELECT s.recorded_at FROM node_health_samples s
        WHERE s.node_id = t.node_id AND s.recorded_at < $2 AND s.downsampled
        ORDER BY s.recorded_at DESC
        LIMIT 1
    ) w ON true
),
ranked AS (
    SELECT s.ctid, s.downsampled,
           row_number() OVER (
               PARTITION BY s.node_id, s.bucket ORDER BY s.recorded_at DESC, s.downsampled DESC
           ) AS rank,
           bool_and(s.downsampled) OVER (PARTITION BY s.node_id, s.bucket) AS done
    FROM todo t
    CROSS JOIN LATERAL (
        -- OFFSET 0 keeps this a range scan of one node's index entries: pulled up into a plain
        -- join, the lower bound becomes a join filter and the planner may scan the whole table.
        SELECT ctid, node_id, recorded_at, downsampled,
               date_bin($3::interval, recorded_at, 'epoch') AS bucket
        FROM node_health_samples
        WHERE node_id = t.node_id AND recorded_at >= t.since AND recorded_at < $2
        OFFSET 0
    ) s
),
removed AS (
    DELETE FROM node_health_samples
    WHERE ctid IN (SELECT ctid FROM ranked WHERE rank > 1 AND NOT done)
    RETURNING 1
),
marked AS (
    UPDATE node_health_samples SET downsampled = true
    WHERE ctid IN (SELECT ctid FROM ranked WHERE rank = 1 AND NOT downsampled)
    RETURNING 1
)
SELECT (SELECT count(*) FROM removed) AS removed, (SELECT count(*) FROM marked) AS marked
"""


def _sample(row: Any) -> HealthSample:
    return HealthSample(*(row[name] for name in SAMPLE_COLUMNS))


def _row_count(status: str) -> int:
    # asyncpg returns the command tag, e.g. "DELETE 42".
    return int(status.rsplit(" ", 1)[-1])


def _require_aware(name: str, value: datetime | None) -> None:
    if value is not None and value.tzinfo is None:
        raise ValueError(f"{name} must be timezone-aware")


async def latest(db: Database, node_id: UUID) -> HealthSample | None:
    """The node's newest sample, or None when it has none."""
    row = await db.fetchrow(LATEST, node_id)
    return None if row is None else _sample(row)


async def history(
    db: Database, node_id: UUID, since: datetime | None, until: datetime | None, limit: int
) -> list[HealthSample]:
    """The node's samples with ``since <= recorded_at < until``, newest first, at most `limit`.

    A None bound is open. Raises ValueError for a negative limit or a naive datetime.
    """
    if limit < 0:
        raise ValueError("limit must not be negative")
    _require_aware("since", since)
    _require_aware("until", until)
    rows = await db.fetch(HISTORY, node_id, since, until, limit)
    return [_sample(row) for row in rows]


async def delete_older_than(db: Database, cutoff: datetime, batch: int = 10_000) -> int:
    """Delete every sample recorded before `cutoff`, `batch` rows per statement; returns the count.

    Each statement commits on its own: cancelling between them keeps what was deleted.
    """
    if batch < 1:
        raise ValueError("batch must be positive")
    _require_aware("cutoff", cutoff)
    total = 0
    while True:
        deleted = _row_count(await db.execute(DELETE_OLDER_THAN, cutoff, batch))
        total += deleted
        if deleted < batch:
            return total


def bucket_floor(moment: datetime, bucket_sec: int) -> datetime:
    """The start of `moment`'s bucket; buckets of `bucket_sec` are aligned on the Unix epoch."""
    epoch = datetime(1970, 1, 1, tzinfo=UTC)
    seconds = (moment - epoch) // timedelta(seconds=1)
    return epoch + timedelta(seconds=seconds - seconds % bucket_sec)


async def downsample(
    db: Database, older_than: datetime, bucket_sec: int, batch_nodes: int = 100
) -> int:
    """Thin samples older than `older_than` to one per (node, `bucket_sec` bucket); rows removed.

    Only whole buckets are thinned (`older_than` is rounded down to a bucket start), so a bucket
    is never cut in two. The latest sample of a bucket is kept and marked ``downsampled``. Running
    it again removes nothing new. One statement (one transaction) per `batch_nodes` nodes.

    Each node is scanned from its newest thinned bucket on, so a run costs what aged since the
    last one, not the whole history. The price: a sample that arrives recorded before that
    bucket (a node clock far behind) is not thinned; retention still deletes it.
    """
    if bucket_sec < 1 or batch_nodes < 1:
        raise ValueError("bucket_sec and batch_nodes must be positive")
    _require_aware("older_than", older_than)
    cutoff = bucket_floor(older_than, bucket_sec)
    removed = 0
    after = UUID(int=0)
    while True:
        node_ids = [row["id"] for row in await db.fetch(NODE_PAGE, after, batch_nodes)]
        if not node_ids:
            return removed
        row = await db.fetchrow(DOWNSAMPLE, node_ids, cutoff, timedelta(seconds=bucket_sec))
        removed += int(row["removed"])
        after = node_ids[-1]
