"""Numbered, forward-only SQL migrations from ``persistence/migrations/NNNN_name.sql``.

Each migration runs in its own transaction and is recorded in ``schema_migrations``; applying
twice is a no-op. A transaction-level advisory lock keeps two daemons from migrating at once.
"""

from __future__ import annotations

import logging
import re
from importlib import resources

import attrs

from flatrender.persistence.db import Database

log = logging.getLogger("flatrender.migrate")

_NAME = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")
_LOCK_KEY = 0x466C6174  # "Flat": serialises concurrent migrate runs

CREATE_TABLE = """
CREATE TABLE IF NOT EXISTS schema_migrations (
    version    integer PRIMARY KEY,
    name       text NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now()
)
"""
APPLIED = "SELECT version FROM schema_migrations ORDER BY version"
RECORD = "INSERT INTO schema_migrations (version, name) VALUES ($1, $2)"
TABLE_EXISTS = "SELECT to_regclass('schema_migrations') IS NOT NULL"


@attrs.frozen
class Migration:
    version: int
    name: str
    sql: str


class SchemaBehind(Exception):
    """The database lacks migrations this code needs."""


def available() -> list[Migration]:
    folder = resources.files("flatrender.persistence") / "migrations"
    found = []
    for entry in folder.iterdir():
        match = _NAME.match(entry.name)
        if match:
            found.append(Migration(int(match[1]), match[2], entry.read_text(encoding="utf-8")))
    found.sort(key=lambda m: m.version)
    versions = [m.version for m in found]
    if versions != list(range(1, len(found) + 1)):
        raise RuntimeError(f"migration numbers must run 1..n without gaps, found {versions}")
    return found


async def applied_versions(db: Database) -> set[int]:
    if not await db.fetchval(TABLE_EXISTS):
        return set()
    return {row["version"] for row in await db.fetch(APPLIED)}


async def migrate(db: Database) -> list[Migration]:
    """Apply every migration not yet recorded; return those applied now."""
    done: list[Migration] = []
    async with db.transaction() as conn:
        await conn.execute("SELECT pg_advisory_xact_lock($1)", _LOCK_KEY)
        await conn.execute(CREATE_TABLE)
    for migration in available():
        async with db.transaction() as conn:
            await conn.execute("SELECT pg_advisory_xact_lock($1)", _LOCK_KEY)
            exists = await conn.fetchval(
                "SELECT 1 FROM schema_migrations WHERE version = $1", migration.version
            )
            if exists:
                continue
            await conn.execute(migration.sql)
            await conn.execute(RECORD, migration.version, migration.name)
        log.info("applied migration %04d_%s", migration.version, migration.name)
        done.append(migration)
    return done


async def check_current(db: Database) -> None:
    """Raise :class:`SchemaBehind` when migrations are missing (``serve`` refuses to start)."""
    missing = {m.version for m in available()} - await applied_versions(db)
    if missing:
        raise SchemaBehind(
            f"the database schema is behind (missing migrations {sorted(missing)}): "
            "run `flatrender migrate --config FILE` first"
        )
