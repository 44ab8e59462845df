"""Render nodes, their pending commands and their crash records."""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any
from uuid import UUID

import asyncpg
import attrs

from flatrender.domain.model import CommandType, NodeCommand, NodeStatus
from flatrender.domain.node_status import NodeState
from flatrender.persistence.db import Connection, Database


class NodeNameTaken(Exception):
    """Another node already has this name."""


@attrs.frozen
class NodeRow:
    """A ``nodes`` row: every ``RenderNodeDetail`` field plus bookkeeping."""

    id: UUID
    name: str
    region: str
    node_ip: str
    worker_port: int
    status: NodeStatus
    node_kind: str
    owner_user_id: UUID | None
    current_ae_version: str
    available_ae_versions: list[str]
    node_agent_version: str
    ram_gb: int
    cpu_cores: int
    priority: int
    is_active: bool
    accepts_new_jobs: bool
    last_heartbeat_at: datetime | None
    current_job_id: UUID | None
    last_cpu_pct: int
    last_ram_available_mb: int
    ae_running: bool
    cache_used_gb: int
    cached_template_md5s: list[str]
    lifetime_task_count: int
    lifetime_crash_count: int
    consecutive_failures: int
    last_maintenance_at: datetime | None
    next_maintenance_at: datetime | None
    maintenance_reason: str | None
    created_at: datetime
    updated_at: datetime

    @property
    def state(self) -> NodeState:
        return NodeState(
            status=self.status,
            is_active=self.is_active,
            accepts_new_jobs=self.accepts_new_jobs,
            consecutive_failures=self.consecutive_failures,
            lifetime_crash_count=self.lifetime_crash_count,
            next_maintenance_at=self.next_maintenance_at,
            last_maintenance_at=self.last_maintenance_at,
            busy=self.current_job_id is not None,
        )


@attrs.frozen
class NewNode:
    name: str
    region: str
    node_ip: str
    worker_port: int
    current_ae_version: str
    ram_gb: int = 0
    cpu_cores: int = 0
    node_kind: str = "Shared"
    owner_user_id: UUID | None = None
    priority: int = 0


@attrs.frozen
class OnlineInfo:
    node_agent_version: str
    current_ae_version: str
    available_ae_versions: list[str]
    ram_gb: int
    cpu_cores: int
    cache_used_gb: int
    cached_template_md5s: list[str]


def row_from_record(record: Any) -> NodeRow:
    data = dict(record)
    data["status"] = NodeStatus(data["status"])
    return NodeRow(**data)


INSERT = """
INSERT INTO nodes (id, name, region, node_ip, worker_port, current_ae_version, ram_gb, cpu_cores,
    node_kind, owner_user_id, priority, available_ae_versions)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, ARRAY[$6])
RETURNING *
"""


async def insert(db: Database, node_id: UUID, node: NewNode) -> NodeRow:
    try:
        record = await db.fetchrow(
            INSERT,
            node_id,
            node.name,
            node.region,
            node.node_ip,
            node.worker_port,
            node.current_ae_version,
            node.ram_gb,
            node.cpu_cores,
            node.node_kind,
            node.owner_user_id,
            node.priority,
        )
    except asyncpg.UniqueViolationError:
        raise NodeNameTaken(node.name) from None
    return row_from_record(record)


async def get(db: Database, node_id: UUID) -> NodeRow | None:
    record = await db.fetchrow("SELECT * FROM nodes WHERE id = $1", node_id)
    return None if record is None else row_from_record(record)


LIST = """
SELECT * FROM nodes
WHERE ($1::text IS NULL OR region = $1) AND ($2::text IS NULL OR status = $2)
ORDER BY region, name
"""


async def list_nodes(db: Database, region: str | None, status: str | None) -> list[NodeRow]:
    return [row_from_record(r) for r in await db.fetch(LIST, region, status)]


async def all_ids(db: Database) -> list[UUID]:
    return [r["id"] for r in await db.fetch("SELECT id FROM nodes ORDER BY created_at")]


SAVE_STATE = """
UPDATE nodes SET status = $2, is_active = $3, accepts_new_jobs = $4, consecutive_failures = $5,
    lifetime_crash_count = $6, next_maintenance_at = $7, last_maintenance_at = $8,
    updated_at = now()
WHERE id = $1
"""


# The state and a new command in one statement (a data-modifying WITH always runs): the hot
# path of handing a node work, one round trip with no BEGIN/COMMIT of its own.
SAVE_STATE_WITH_COMMAND = """
WITH command AS (
    INSERT INTO node_commands (id, node_id, type, payload) VALUES ($9, $1, $10, $11)
)
UPDATE nodes SET status = $2, is_active = $3, accepts_new_jobs = $4, consecutive_failures = $5,
    lifetime_crash_count = $6, next_maintenance_at = $7, last_maintenance_at = $8,
    updated_at = now()
WHERE id = $1
"""


async def save_state_with_command(
    db: Connection | Database, node_id: UUID, state: NodeState, command: NodeCommand
) -> None:
    """:func:`save_state` and :func:`insert_command` together, atomically."""
    await db.execute(
        SAVE_STATE_WITH_COMMAND,
        node_id,
        state.status.value,
        state.is_active,
        state.accepts_new_jobs,
        state.consecutive_failures,
        state.lifetime_crash_count,
        state.next_maintenance_at,
        state.last_maintenance_at,
        command.id,
        command.type.value,
        _stored_payload(command),
    )


async def save_state(conn: Connection | Database, node_id: UUID, state: NodeState) -> None:
    await conn.execute(
        SAVE_STATE,
        node_id,
        state.status.value,
        state.is_active,
        state.accepts_new_jobs,
        state.consecutive_failures,
        state.lifetime_crash_count,
        state.next_maintenance_at,
        state.last_maintenance_at,
    )


SAVE_ONLINE = """
UPDATE nodes SET node_agent_version = $2, current_ae_version = $3, available_ae_versions = $4,
    ram_gb = $5, cpu_cores = $6, cache_used_gb = $7, cached_template_md5s = $8,
    last_heartbeat_at = $9, current_job_id = NULL, ae_running = false, updated_at = now()
WHERE id = $1
"""


async def save_online(conn: Connection, node_id: UUID, info: OnlineInfo, now: datetime) -> None:
    await conn.execute(
        SAVE_ONLINE,
        node_id,
        info.node_agent_version,
        info.current_ae_version,
        info.available_ae_versions,
        info.ram_gb,
        info.cpu_cores,
        info.cache_used_gb,
        info.cached_template_md5s,
        now,
    )


SAVE_CACHE = """
UPDATE nodes SET cached_template_md5s = $2, cache_used_gb = COALESCE($3, cache_used_gb),
    updated_at = now()
WHERE id = $1
"""


async def save_cache(
    db: Database, node_id: UUID, md5s: list[str], cache_used_gb: int | None
) -> None:
    await db.execute(SAVE_CACHE, node_id, md5s, cache_used_gb)


SAVE_ADMIN_FIELDS = """
UPDATE nodes SET priority = $2, node_kind = $3, owner_user_id = $4, maintenance_reason = $5,
    updated_at = now()
WHERE id = $1
"""


async def save_admin_fields(
    conn: Connection,
    node_id: UUID,
    priority: int,
    node_kind: str,
    owner_user_id: UUID | None,
    maintenance_reason: str | None,
) -> None:
    await conn.execute(
        SAVE_ADMIN_FIELDS, node_id, priority, node_kind, owner_user_id, maintenance_reason
    )


# ------------------------------------------------------------------ commands

INSERT_COMMAND = "INSERT INTO node_commands (id, node_id, type, payload) VALUES ($1, $2, $3, $4)"
PENDING = """
SELECT id, type, payload FROM node_commands
WHERE node_id = $1 AND acked_at IS NULL ORDER BY created_at, id
"""
ACK = """
UPDATE node_commands SET acked_at = now()
WHERE node_id = $1 AND id = ANY($2::uuid[]) AND acked_at IS NULL
RETURNING id
"""


async def insert_command(conn: Connection | Database, node_id: UUID, command: NodeCommand) -> None:
    await conn.execute(
        INSERT_COMMAND, command.id, node_id, command.type.value, _stored_payload(command)
    )


def _stored_payload(command: NodeCommand) -> Any:
    # Round-trip through JSON so what is stored is exactly what the node will read.
    return json.loads(json.dumps(command.payload, default=str))


async def pending_commands(db: Database, node_id: UUID) -> list[NodeCommand]:
    return [
        NodeCommand(r["id"], CommandType(r["type"]), dict(r["payload"]))
        for r in await db.fetch(PENDING, node_id)
    ]


async def ack_commands(db: Database, node_id: UUID, ids: list[UUID]) -> set[UUID]:
    """Mark commands acknowledged; unknown, foreign or already acked ids are ignored."""
    return {r["id"] for r in await db.fetch(ACK, node_id, ids)}


ASSIGNED_WORK = """
SELECT id FROM frame_jobs WHERE node_id = $1 AND status IN ('Assigned', 'Rendering', 'Rendered')
"""


async def assigned_work(db: Database, node_id: UUID) -> set[UUID]:
    """The ranges a node holds (rebuilding a node actor)."""
    return {r["id"] for r in await db.fetch(ASSIGNED_WORK, node_id)}


# ------------------------------------------------------------------ crashes


@attrs.frozen
class CrashReport:
    node_id: UUID
    render_job_id: UUID | None
    frame_job_id: UUID | None
    last_known_frame: int | None
    crash_signal: str
    ae_version: str
    error_log: str
    log_file_url: str


@attrs.frozen
class CrashRow:
    id: UUID
    node_id: UUID
    render_job_id: UUID | None
    crashed_at: datetime
    last_known_frame: int | None
    crash_signal: str
    error_log: str
    log_file_url: str
    auto_recovered: bool
    recovery_action: str
    recovered_at: datetime | None
    reassigned_to_node_id: UUID | None


INSERT_CRASH = """
INSERT INTO node_crashes (id, node_id, render_job_id, frame_job_id, last_known_frame,
    crash_signal, ae_version, error_log, log_file_url, recovery_action)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)
ON CONFLICT (node_id, frame_job_id, last_known_frame) DO NOTHING
RETURNING *
"""
# What the crash policy needs to know of a node's past crashes (before this one is recorded).
CRASH_HISTORY = """
SELECT count(*) FILTER (WHERE crashed_at > $3) AS recent,
       count(*) FILTER (WHERE frame_job_id = $2) AS on_range
FROM node_crashes WHERE node_id = $1
"""
FIND_CRASH = """
SELECT * FROM node_crashes
WHERE node_id = $1 AND frame_job_id IS NOT DISTINCT FROM $2
  AND last_known_frame IS NOT DISTINCT FROM $3
"""
CRASH_COLUMNS = (
    "id, node_id, render_job_id, crashed_at, last_known_frame, crash_signal, error_log, "
    "log_file_url, auto_recovered, recovery_action, recovered_at, reassigned_to_node_id"
)


async def record_crash(
    conn: Connection, crash_id: UUID, report: CrashReport, action: str
) -> CrashRow | None:
    """Insert the crash; None when this exact report was recorded before (a retry)."""
    inserted = await conn.fetchrow(
        INSERT_CRASH,
        crash_id,
        report.node_id,
        report.render_job_id,
        report.frame_job_id,
        report.last_known_frame,
        report.crash_signal,
        report.ae_version,
        report.error_log,
        report.log_file_url,
        action,
    )
    return None if inserted is None else _crash(inserted)


async def crash_history(
    conn: Connection | Database, node_id: UUID, range_id: UUID, since: datetime
) -> tuple[int, int]:
    """The node's crashes since ``since``, and its crashes on the range (any time)."""
    row = await conn.fetchrow(CRASH_HISTORY, node_id, range_id, since)
    return int(row["recent"]), int(row["on_range"])


async def find_crash(conn: Connection | Database, report: CrashReport) -> CrashRow | None:
    record = await conn.fetchrow(
        FIND_CRASH, report.node_id, report.frame_job_id, report.last_known_frame
    )
    return None if record is None else _crash(record)


def _crash(record: Any) -> CrashRow:
    data = dict(record)
    return CrashRow(**{f.name: data[f.name] for f in attrs.fields(CrashRow)})


LIST_CRASHES = f"""
SELECT {CRASH_COLUMNS} FROM node_crashes WHERE node_id = $1 ORDER BY crashed_at DESC LIMIT $2
"""


async def list_crashes(db: Database, node_id: UUID, limit: int = 200) -> list[CrashRow]:
    return [_crash(r) for r in await db.fetch(LIST_CRASHES, node_id, limit)]
