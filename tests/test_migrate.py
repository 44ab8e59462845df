"""Numbered forward-only migrations against a real, empty PostgreSQL database."""

import itertools

import pytest
import trio_asyncio

from flatrender.persistence.db import open_database
from flatrender.persistence.migrate import SchemaBehind, available, check_current, migrate

_names = itertools.count()


@pytest.fixture
def empty_url(pg_server) -> str:
    return pg_server.create_database(f"empty_{next(_names)}")


async def test_migrations_apply_to_an_empty_database_then_are_a_no_op(empty_url) -> None:
    async with trio_asyncio.open_loop(), open_database(empty_url, 1, 2) as db:
        with pytest.raises(SchemaBehind, match="flatrender migrate"):
            await check_current(db)
        first = await migrate(db)
        assert [m.version for m in first] == [m.version for m in available()]
        await check_current(db)
        assert await migrate(db) == []
        rows = await db.fetch("SELECT version, name FROM schema_migrations ORDER BY version")
        assert [(r["version"], r["name"]) for r in rows] == [(m.version, m.name) for m in first]
        tables = {
            r["tablename"]
            for r in await db.fetch("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")
        }
        for table in (
            "render_jobs",
            "frame_jobs",
            "frame_reports",
            "job_logs",
            "snapshots",
            "exports",
            "export_files",
            "nodes",
            "node_health_samples",
            "node_crashes",
            "node_updates",
            "node_update_rollouts",
            "node_commands",
            "catalog_projects",
            "catalog_scenes",
            "ledger_entries",
            "accounts",
        ):
            assert table in tables


async def test_concurrent_migrate_runs_apply_each_migration_once(empty_url) -> None:
    import trio

    applied: list[int] = []
    async with trio_asyncio.open_loop(), open_database(empty_url, 2, 4) as db:

        async def run() -> None:
            applied.extend(m.version for m in await migrate(db))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(run)
            nursery.start_soon(run)
        recorded = [r["version"] for r in await db.fetch("SELECT version FROM schema_migrations")]
    # The two runs may share the work, but together they apply each migration exactly once.
    assert sorted(applied) == sorted(recorded) == [m.version for m in available()]


def test_migration_files_are_numbered_without_gaps() -> None:
    versions = [m.version for m in available()]
    assert versions == list(range(1, len(versions) + 1))
