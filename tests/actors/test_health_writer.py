"""HealthWriter on a real, migrated database: batching, node rows, unknown nodes, capacity,
outages and the final flush on shutdown."""

from __future__ import annotations

import logging
import random
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID, uuid4

import attrs
import pytest
import trio
import trio.testing

from flatrender.actors.health_writer import HealthWriter
from flatrender.domain.model import HealthSample
from flatrender.persistence.db import Database, DatabaseUnavailable, DataRefused

T0 = datetime(2030, 1, 1, 12, 0, tzinfo=UTC)


async def add_node(db: Database) -> UUID:
    node_id = uuid4()
    await db.execute(
        "INSERT INTO nodes (id, name, region, node_ip, worker_port, current_ae_version)"
        " VALUES ($1, $2, 'eu', '10.0.0.1', 9000, '24.0')",
        node_id,
        f"node-{node_id}",
    )
    return node_id


@pytest.fixture
async def nodes(db: Database) -> list[UUID]:
    return [await add_node(db) for _ in range(3)]


def sample(node_id: UUID, second: int, *, job: UUID | None = None) -> HealthSample:
    """A sample whose values all derive from `second`, so a node row shows which one it holds."""
    return HealthSample(
        node_id=node_id,
        recorded_at=T0 + timedelta(seconds=second),
        status="Busy",
        cpu_pct=second % 100,
        ram_available_mb=1000 + second,
        ae_running=second % 2 == 0,
        current_job_id=job,
        current_frame=second,
        cache_used_gb=second % 50,
    )


async def node_row(db: Database, node_id: UUID) -> dict[str, Any]:
    row = await db.fetchrow(
        "SELECT last_heartbeat_at, last_cpu_pct, last_ram_available_mb, ae_running,"
        " cache_used_gb, current_job_id FROM nodes WHERE id = $1",
        node_id,
    )
    return dict(row)


def expected_row(s: HealthSample) -> dict[str, Any]:
    return {
        "last_heartbeat_at": s.recorded_at,
        "last_cpu_pct": s.cpu_pct,
        "last_ram_available_mb": s.ram_available_mb,
        "ae_running": s.ae_running,
        "cache_used_gb": s.cache_used_gb,
        "current_job_id": s.current_job_id,
    }


async def stored_count(db: Database, node_id: UUID | None = None) -> int:
    if node_id is None:
        return int(await db.fetchval("SELECT count(*) FROM node_health_samples"))
    return int(
        await db.fetchval("SELECT count(*) FROM node_health_samples WHERE node_id = $1", node_id)
    )


async def until(condition: Callable[[], bool]) -> None:
    """Wait (2 s at most) for the writer's own task to make `condition` true."""
    with trio.fail_after(2):
        # The writer exposes no event for "written": polling its statistics is the honest wait.
        while not condition():  # noqa: ASYNC110
            await trio.sleep(0.01)


@asynccontextmanager
async def running(writer: HealthWriter) -> AsyncIterator[HealthWriter]:
    async with trio.open_nursery() as nursery:
        await nursery.start(writer.run)
        yield writer
        nursery.cancel_scope.cancel()


async def test_flush_writes_every_sample_and_each_node_row_holds_its_latest(
    db: Database, nodes: list[UUID]
) -> None:
    job = uuid4()
    samples = [sample(n, s, job=job if s % 3 else None) for n in nodes for s in range(40)]
    random.Random(7).shuffle(samples)  # the latest sample of a node is not its last submitted
    writer = HealthWriter(db, flush_interval_sec=60)
    for s in samples:
        assert writer.submit(s)

    await writer.flush()

    assert await stored_count(db) == len(samples)
    for node_id in nodes:
        assert await node_row(db, node_id) == expected_row(sample(node_id, 39, job=None))
    stats = writer.statistics()
    assert (stats.submitted, stats.written, stats.pending, stats.batches) == (120, 120, 0, 1)


async def test_run_flushes_after_the_interval(db: Database, nodes: list[UUID]) -> None:
    async with running(HealthWriter(db, flush_interval_sec=0.05)) as writer:
        for second in range(5):
            writer.submit(sample(nodes[0], second))
        await until(lambda: writer.statistics().written == 5)
    assert await node_row(db, nodes[0]) == expected_row(sample(nodes[0], 4))


async def test_a_full_batch_wakes_the_writer_before_the_interval(
    db: Database, nodes: list[UUID]
) -> None:
    async with running(HealthWriter(db, flush_interval_sec=60, max_batch=10)) as writer:
        for second in range(10):
            writer.submit(sample(nodes[second % 3], second))
        await until(lambda: writer.statistics().written == 10)
        for second in range(10, 13):  # less than a batch: waits for the interval
            writer.submit(sample(nodes[0], second))
        await trio.sleep(0.05)
        assert (writer.statistics().batches, writer.statistics().pending) == (1, 3)
    assert await stored_count(db) == 13  # the tail went out with the final flush


async def test_an_older_sample_does_not_regress_the_node_row(
    db: Database, nodes: list[UUID]
) -> None:
    node = nodes[0]
    writer = HealthWriter(db)
    writer.submit(sample(node, 20))
    await writer.flush()
    writer.submit(sample(node, 10))  # e.g. a retried heartbeat that was overtaken
    await writer.flush()

    assert await node_row(db, node) == expected_row(sample(node, 20))
    assert await stored_count(db, node) == 2  # history still keeps both


async def test_samples_of_an_unknown_node_are_skipped_without_losing_the_others(
    db: Database, nodes: list[UUID]
) -> None:
    deleted = nodes[2]
    await db.execute("DELETE FROM nodes WHERE id = $1", deleted)
    writer = HealthWriter(db)
    for second in range(6):
        writer.submit(sample(nodes[0], second))
        writer.submit(sample(uuid4(), second))
        writer.submit(sample(deleted, second))

    await writer.flush()

    assert await stored_count(db) == 6
    assert await node_row(db, nodes[0]) == expected_row(sample(nodes[0], 5))
    stats = writer.statistics()
    assert (stats.written, stats.skipped, stats.pending) == (6, 12, 0)


async def test_submit_never_blocks_and_drops_the_oldest_at_capacity(
    db: Database, nodes: list[UUID]
) -> None:
    writer = HealthWriter(db, capacity=5)  # not running: nothing drains the buffer
    with trio.testing.assert_no_checkpoints():
        accepted = [writer.submit(sample(nodes[0], second)) for second in range(8)]

    assert accepted == [True] * 5 + [False] * 3
    stats = writer.statistics()
    assert (stats.submitted, stats.dropped, stats.pending) == (8, 3, 5)
    await writer.flush()
    rows = await db.fetch("SELECT current_frame FROM node_health_samples ORDER BY current_frame")
    assert [row["current_frame"] for row in rows] == [3, 4, 5, 6, 7]  # the newest five


async def test_pending_samples_are_flushed_on_cancellation(db: Database, nodes: list[UUID]) -> None:
    async with running(HealthWriter(db, flush_interval_sec=60)) as writer:
        for second in range(7):
            writer.submit(sample(nodes[1], second))
        await trio.sleep(0.01)  # let the writer settle into its wait
        assert await stored_count(db) == 0

    assert await stored_count(db) == 7
    assert writer.statistics().pending == 0


async def test_one_flush_writes_each_node_row_once_in_one_statement(
    db: Database, nodes: list[UUID]
) -> None:
    # Triggers log every row written and every UPDATE statement run on nodes.
    await db.execute(
        """
        CREATE TABLE nodes_writes (kind text NOT NULL, node_id uuid);
        CREATE FUNCTION log_node_row() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN INSERT INTO nodes_writes VALUES ('row', NEW.id); RETURN NULL; END $$;
        CREATE FUNCTION log_node_statement() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN INSERT INTO nodes_writes VALUES ('statement', NULL); RETURN NULL; END $$;
        CREATE TRIGGER log_node_row AFTER UPDATE ON nodes
            FOR EACH ROW EXECUTE FUNCTION log_node_row();
        CREATE TRIGGER log_node_statement AFTER UPDATE ON nodes
            FOR EACH STATEMENT EXECUTE FUNCTION log_node_statement();
        """
    )
    writer = HealthWriter(db)
    for second in range(10):
        for node_id in nodes:
            writer.submit(sample(node_id, second))

    await writer.flush()

    rows = await db.fetch("SELECT kind, node_id FROM nodes_writes")
    assert sorted(row["node_id"] for row in rows if row["kind"] == "row") == sorted(nodes)
    assert [row["kind"] for row in rows].count("statement") == 1
    assert await stored_count(db) == 30


class FlakyDatabase:
    """Delegates to a real Database after refusing the first `failures` transactions."""

    def __init__(self, db: Database, failures: int) -> None:
        self.db = db
        self.failures = failures

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[Any]:
        if self.failures > 0:
            self.failures -= 1
            raise DatabaseUnavailable("connection refused")
        async with self.db.transaction() as conn:
            yield conn


async def test_an_outage_keeps_the_samples_retries_and_warns_once(
    db: Database, nodes: list[UUID], caplog: pytest.LogCaptureFixture
) -> None:
    flaky = FlakyDatabase(db, failures=4)
    writer = HealthWriter(
        flaky,  # type: ignore[arg-type]
        flush_interval_sec=0.01,
        retry_initial_sec=0.01,
        retry_max_sec=0.02,
    )
    async with running(writer):
        for second in range(5):
            writer.submit(sample(nodes[0], second))
        await until(lambda: writer.statistics().written == 5)

    assert flaky.failures == 0
    assert await stored_count(db) == 5
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "unavailable" in warnings[0].getMessage()
    assert writer.statistics().dropped == 0


async def test_a_batch_the_database_refuses_is_dropped_not_retried_forever(
    db: Database, nodes: list[UUID], caplog: pytest.LogCaptureFixture
) -> None:
    writer = HealthWriter(db, max_batch=2)
    writer.submit(sample(nodes[0], 1))
    writer.submit(attrs.evolve(sample(nodes[0], 2), status="Bu\x00sy"))  # text cannot hold NUL
    writer.submit(sample(nodes[1], 3))

    await writer.flush()

    stats = writer.statistics()
    assert (stats.written, stats.rejected, stats.pending) == (1, 2, 0)
    assert await stored_count(db, nodes[1]) == 1
    assert any(r.levelno == logging.ERROR for r in caplog.records)


def test_submit_refuses_a_sample_the_table_cannot_hold() -> None:
    writer = HealthWriter(None)  # type: ignore[arg-type]
    with pytest.raises(DataRefused):
        writer.submit(attrs.evolve(sample(uuid4(), 1), cpu_pct=2**31))
    assert writer.statistics().pending == 0
