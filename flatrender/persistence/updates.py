"""Node software updates (``node_updates``) and their rollouts (``node_update_rollouts``).

Owns no state. Publishing numbers updates 1, 2, 3... under a transaction-level advisory lock, so
concurrent publishers never take the same number. A rollout request queues its nodes in one
transaction (all or nothing). The rollout actor changes a row's status only by compare-and-set
on the status it read; halting and finishing lock the update's row and check that no newer wave
was queued meanwhile. Database outages raise `DatabaseUnavailable`.

A *wave* is the set of rows whose ``queued_at`` equals the update's latest ``queued_at``: every
row touched by one rollout request gets the same transaction timestamp (``now()``).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any
from uuid import UUID

import attrs

from flatrender.domain.rollout import Crash, RolloutStatus, Target
from flatrender.persistence.db import Connection, Database

_NUMBER_LOCK = 0x4E555044  # "NUPD": serialises update numbering


class UpdateNotFound(LookupError):
    """No node update with this id."""


class UnknownNodes(LookupError):
    """Some node ids of a rollout request name no node; nothing was queued."""

    def __init__(self, node_ids: Sequence[UUID]) -> None:
        super().__init__(", ".join(str(n) for n in node_ids))
        self.node_ids = tuple(node_ids)


@attrs.frozen
class NewUpdate:
    id: UUID
    update_file_name: str
    storage_key: str
    sha256: str
    size_bytes: int
    description: str
    target_ae_version: str


@attrs.frozen
class NodeUpdate:
    """A ``node_updates`` row plus the nodes that confirmed it (oldest confirmation first)."""

    id: UUID
    update_number: int
    update_file_name: str
    storage_key: str
    sha256: str
    size_bytes: int
    description: str
    target_ae_version: str
    in_update_queue: bool
    halted_reason: str | None
    create_date: datetime
    rolled_out_to_node_ids: tuple[UUID, ...] = ()


@attrs.frozen
class Queued:
    """The answer to a rollout request: node ids now queued, and those left as they were."""

    queued: tuple[UUID, ...]
    skipped: dict[UUID, str]  # node id -> status (Confirmed: has it; Sent: in flight)


def _update(record: Any) -> NodeUpdate:
    data = dict(record)
    data["rolled_out_to_node_ids"] = tuple(data.get("rolled_out_to_node_ids") or ())
    return NodeUpdate(**{f.name: data[f.name] for f in attrs.fields(NodeUpdate)})


# ------------------------------------------------------------------ updates

INSERT = """
INSERT INTO node_updates (id, update_number, update_file_name, storage_key, sha256, size_bytes,
    description, target_ae_version)
VALUES ($1, (SELECT COALESCE(max(update_number), 0) + 1 FROM node_updates), $2, $3, $4, $5, $6, $7)
RETURNING *
"""
SELECT_UPDATES = """
SELECT u.*, ARRAY(
    SELECT r.node_id FROM node_update_rollouts r
    WHERE r.update_id = u.id AND r.status = 'Confirmed'
    ORDER BY r.confirmed_at, r.node_id
) AS rolled_out_to_node_ids
FROM node_updates u
"""
LIST = SELECT_UPDATES + "ORDER BY u.update_number DESC"
GET = SELECT_UPDATES + "WHERE u.id = $1"


async def publish(db: Database, new: NewUpdate) -> NodeUpdate:
    """Record an update whose file is already stored; it gets the next ``update_number``."""
    async with db.transaction() as conn:
        await conn.execute("SELECT pg_advisory_xact_lock($1)", _NUMBER_LOCK)
        record = await conn.fetchrow(
            INSERT,
            new.id,
            new.update_file_name,
            new.storage_key,
            new.sha256,
            new.size_bytes,
            new.description,
            new.target_ae_version,
        )
    return _update(record)


async def list_updates(db: Database) -> list[NodeUpdate]:
    """Every update, newest first."""
    return [_update(r) for r in await db.fetch(LIST)]


async def get(db: Database, update_id: UUID) -> NodeUpdate | None:
    record = await db.fetchrow(GET, update_id)
    return None if record is None else _update(record)


# ------------------------------------------------------------------ rollout requests

LOCK_UPDATE = "SELECT in_update_queue FROM node_updates WHERE id = $1 FOR UPDATE"
KNOWN_NODES = "SELECT id FROM nodes WHERE id = ANY($1::uuid[])"
# Nodes still pending join the new wave; so does the running wave of an update in its queue.
JOIN_WAVE = """
UPDATE node_update_rollouts SET queued_at = now()
WHERE update_id = $1 AND (status IN ('Queued', 'Sent') OR ($2 AND queued_at = (
    SELECT max(queued_at) FROM node_update_rollouts WHERE update_id = $1)))
"""
# Confirmed nodes have the update; Sent ones are installing it: both are left alone.
QUEUE_NODES = """
INSERT INTO node_update_rollouts (update_id, node_id, queued_at)
SELECT $1, unnest($2::uuid[]), now()
ON CONFLICT (update_id, node_id) DO UPDATE
SET status = 'Queued', queued_at = now(), sent_at = NULL, confirmed_at = NULL
WHERE node_update_rollouts.status IN ('Failed', 'Halted')
"""
STATUSES = """
SELECT node_id, status FROM node_update_rollouts WHERE update_id = $1 AND node_id = ANY($2::uuid[])
"""
ENTER_QUEUE = "UPDATE node_updates SET in_update_queue = true, halted_reason = NULL WHERE id = $1"


async def queue_rollout(db: Database, update_id: UUID, node_ids: Sequence[UUID]) -> Queued:
    """Queue ``node_ids`` (duplicates ignored) for the update, in one transaction.

    Raises `UpdateNotFound`, or `UnknownNodes` listing every id that names no node (then nothing
    is queued). Failed and halted nodes are queued again; a halted update re-enters its queue
    and its ``halted_reason`` is cleared as soon as one node is queued.
    """
    ids = list(dict.fromkeys(node_ids))
    async with db.transaction() as conn:
        in_queue = await conn.fetchval(LOCK_UPDATE, update_id)
        if in_queue is None:
            raise UpdateNotFound(str(update_id))
        known = {r["id"] for r in await conn.fetch(KNOWN_NODES, ids)}
        missing = [node_id for node_id in ids if node_id not in known]
        if missing:
            raise UnknownNodes(missing)
        await conn.execute(JOIN_WAVE, update_id, in_queue)
        await conn.execute(QUEUE_NODES, update_id, ids)
        status = {r["node_id"]: r["status"] for r in await conn.fetch(STATUSES, update_id, ids)}
        queued = tuple(n for n in ids if status[n] == RolloutStatus.QUEUED.value)
        if queued:
            await conn.execute(ENTER_QUEUE, update_id)
    skipped = {n: status[n] for n in ids if n not in queued}
    return Queued(queued, skipped)


# ------------------------------------------------------------------ the rollout actor's reads


@attrs.frozen
class Pending:
    """An update the rollout actor must look at this round."""

    id: UUID
    update_number: int
    update_file_name: str
    storage_key: str
    in_update_queue: bool


# The one query of an idle round. A halted update is followed while nodes are still installing it.
PENDING = """
SELECT id, update_number, update_file_name, storage_key, in_update_queue FROM node_updates u
WHERE in_update_queue OR (halted_reason IS NOT NULL AND EXISTS (
    SELECT 1 FROM node_update_rollouts r WHERE r.update_id = u.id AND r.status = 'Sent'))
ORDER BY update_number
"""
TARGETS = """
SELECT r.node_id, r.status, r.queued_at, r.sent_at, r.confirmed_at, n.node_agent_version,
    (n.status = 'Idle' AND n.is_active AND n.accepts_new_jobs
        AND (n.next_maintenance_at IS NULL OR n.next_maintenance_at > $2)) AS node_ready,
    r.queued_at = max(r.queued_at) OVER () AS in_wave
FROM node_update_rollouts r JOIN nodes n ON n.id = r.node_id
WHERE r.update_id = $1
ORDER BY r.node_id
"""
CRASHES = """
SELECT node_id, crashed_at FROM node_crashes WHERE node_id = ANY($1::uuid[]) AND crashed_at >= $2
"""
WAVE_AT = "SELECT max(queued_at) FROM node_update_rollouts WHERE update_id = $1"


async def pending(db: Database) -> list[Pending]:
    return [Pending(**dict(r)) for r in await db.fetch(PENDING)]


async def targets(db: Database, update_id: UUID, now: datetime) -> tuple[list[Target], datetime]:
    """Every rollout row of the update with its node's facts, and the current wave's stamp."""
    records = await db.fetch(TARGETS, update_id, now)
    found = [
        Target(
            node_id=r["node_id"],
            status=RolloutStatus(r["status"]),
            in_wave=r["in_wave"],
            sent_at=r["sent_at"],
            confirmed_at=r["confirmed_at"],
            node_version=r["node_agent_version"],
            node_ready=r["node_ready"],
        )
        for r in records
    ]
    wave_at = max((r["queued_at"] for r in records), default=now)
    return found, wave_at


async def crashes_since(db: Database, node_ids: Sequence[UUID], since: datetime) -> list[Crash]:
    return [
        Crash(r["node_id"], r["crashed_at"]) for r in await db.fetch(CRASHES, list(node_ids), since)
    ]


# ------------------------------------------------------------------ the rollout actor's writes

MARK_SENT = """
UPDATE node_update_rollouts SET status = 'Sent', sent_at = $3
WHERE update_id = $1 AND node_id = $2 AND status = 'Queued'
"""
MARK_CONFIRMED = """
UPDATE node_update_rollouts SET status = 'Confirmed', confirmed_at = $3
WHERE update_id = $1 AND node_id = ANY($2::uuid[]) AND status = $4
RETURNING node_id
"""
MARK_FAILED = """
UPDATE node_update_rollouts SET status = 'Failed'
WHERE update_id = $1 AND node_id = ANY($2::uuid[]) AND status = $3
RETURNING node_id
"""
HALT_QUEUED = """
UPDATE node_update_rollouts SET status = 'Halted' WHERE update_id = $1 AND status = 'Queued'
"""
LEAVE_QUEUE = "UPDATE node_updates SET in_update_queue = false, halted_reason = $2 WHERE id = $1"
STILL_PENDING = """
SELECT EXISTS (SELECT 1 FROM node_update_rollouts
               WHERE update_id = $1 AND status IN ('Queued', 'Sent'))
"""


async def mark_sent(db: Database, update_id: UUID, node_id: UUID, now: datetime) -> bool:
    """Queued -> Sent; False when the row was no longer Queued (halted meanwhile)."""
    return await db.execute(MARK_SENT, update_id, node_id, now) == "UPDATE 1"


async def mark_confirmed(
    conn: Connection | Database,
    update_id: UUID,
    node_ids: Sequence[UUID],
    now: datetime,
    was: RolloutStatus,
) -> list[UUID]:
    """``was`` -> Confirmed; returns the node ids whose row changed."""
    records = await conn.fetch(MARK_CONFIRMED, update_id, list(node_ids), now, was.value)
    return [r["node_id"] for r in records]


async def mark_failed(
    conn: Connection | Database, update_id: UUID, node_ids: Sequence[UUID], was: RolloutStatus
) -> list[UUID]:
    """``was`` -> Failed; returns the node ids whose row changed."""
    records = await conn.fetch(MARK_FAILED, update_id, list(node_ids), was.value)
    return [r["node_id"] for r in records]


async def _current_wave(conn: Connection, update_id: UUID, wave_at: datetime) -> bool:
    """Lock the update; True when it is in its queue and no newer wave was queued since."""
    if not await conn.fetchval(LOCK_UPDATE, update_id):
        return False
    return bool(await conn.fetchval(WAVE_AT, update_id) == wave_at)


async def halt(
    db: Database, update_id: UUID, wave_at: datetime, reason: str, timed_out: Sequence[UUID]
) -> bool:
    """Stop the wave: silent nodes Sent -> Failed, queued ones -> Halted, the reason recorded and
    the update out of its queue. False (nothing changed) when a newer wave was queued meanwhile.
    """
    async with db.transaction() as conn:
        if not await _current_wave(conn, update_id, wave_at):
            return False
        await mark_failed(conn, update_id, timed_out, RolloutStatus.SENT)
        await conn.execute(HALT_QUEUED, update_id)
        await conn.execute(LEAVE_QUEUE, update_id, reason)
    return True


async def finish(db: Database, update_id: UUID, wave_at: datetime) -> bool:
    """Take the update out of its queue unless a node is pending or a newer wave was queued."""
    async with db.transaction() as conn:
        if not await _current_wave(conn, update_id, wave_at):
            return False
        if await conn.fetchval(STILL_PENDING, update_id):
            return False
        await conn.execute(LEAVE_QUEUE, update_id, None)
    return True
