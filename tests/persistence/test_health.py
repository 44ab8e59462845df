"""Health history queries on a real, migrated database: reads, retention and downsampling."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from uuid import UUID, uuid4

import attrs
import pytest

from flatrender.domain.model import HealthSample
from flatrender.persistence import health
from flatrender.persistence.db import Database

T0 = datetime(2030, 1, 1, 12, 0, tzinfo=UTC)  # on a 300 s bucket boundary


async def add_node(db: Database) -> UUID:
    node_id = uuid4()
    await db.execute(
        "INSERT INTO nodes (id, name, region, node_ip, worker_port, current_ae_version)"
        " VALUES ($1, $2, 'eu', '10.0.0.1', 9000, '24.0')",
        node_id,
        f"node-{node_id}",
    )
    return node_id


def sample(node_id: UUID, at: datetime, cpu_pct: int = 10) -> HealthSample:
    return HealthSample(
        node_id=node_id,
        recorded_at=at,
        status="Idle",
        cpu_pct=cpu_pct,
        ram_available_mb=4096,
        ae_running=False,
        current_job_id=None,
        current_frame=None,
        cache_used_gb=1,
    )


async def store(db: Database, samples: list[HealthSample]) -> None:
    async with db.connection() as conn:
        await conn.copy_records_to_table(
            "node_health_samples",
            records=[attrs.astuple(s, recurse=False) for s in samples],
            columns=list(health.SAMPLE_COLUMNS),
        )


async def stored(db: Database, node_id: UUID) -> list[tuple[datetime, bool]]:
    rows = await db.fetch(
        "SELECT recorded_at, downsampled FROM node_health_samples"
        " WHERE node_id = $1 ORDER BY recorded_at",
        node_id,
    )
    return [(row["recorded_at"], row["downsampled"]) for row in rows]


def every(node_id: UUID, start: datetime, count: int, step_sec: int) -> list[HealthSample]:
    return [sample(node_id, start + timedelta(seconds=i * step_sec), i) for i in range(count)]


async def test_latest_is_the_newest_sample_or_none(db: Database) -> None:
    node, other = await add_node(db), await add_node(db)
    assert await health.latest(db, node) is None
    samples = every(node, T0, 5, 5)
    await store(db, [samples[4], samples[0], samples[2]] + every(other, T0, 9, 5))

    assert await health.latest(db, node) == samples[4]


async def test_history_is_newest_first_half_open_and_limited(db: Database) -> None:
    node, other = await add_node(db), await add_node(db)
    samples = every(node, T0, 10, 5)
    await store(db, samples[::-1] + every(other, T0, 10, 5))

    assert await health.history(db, node, None, None, 100) == samples[::-1]
    assert await health.history(db, node, samples[2].recorded_at, samples[7].recorded_at, 100) == [
        samples[6],
        samples[5],
        samples[4],
        samples[3],
        samples[2],
    ]
    assert await health.history(db, node, samples[2].recorded_at, None, 3) == samples[9:6:-1]
    assert await health.history(db, node, None, samples[2].recorded_at, 100) == samples[1::-1]
    assert await health.history(db, node, None, None, 0) == []
    assert await health.history(db, uuid4(), None, None, 10) == []


async def test_history_rejects_negative_limit_and_naive_bounds(db: Database) -> None:
    with pytest.raises(ValueError):
        await health.history(db, uuid4(), None, None, -1)
    with pytest.raises(ValueError):
        await health.history(db, uuid4(), datetime(2030, 1, 1), None, 1)


async def test_delete_older_than_removes_exactly_the_older_samples_in_batches(
    db: Database,
) -> None:
    nodes = [await add_node(db), await add_node(db)]
    for node in nodes:
        await store(db, every(node, T0, 25, 10))
    cutoff = T0 + timedelta(seconds=95)  # samples 0..9 of each node are older

    assert await health.delete_older_than(db, cutoff, batch=7) == 20
    for node in nodes:
        assert [at for at, _ in await stored(db, node)] == [
            T0 + timedelta(seconds=10 * i) for i in range(10, 25)
        ]
    assert await health.delete_older_than(db, cutoff, batch=7) == 0


async def test_delete_older_than_with_an_exact_multiple_of_the_batch(db: Database) -> None:
    node = await add_node(db)
    await store(db, every(node, T0, 10, 10))

    assert await health.delete_older_than(db, T0 + timedelta(seconds=55), batch=3) == 6
    assert len(await stored(db, node)) == 4


async def test_downsample_keeps_the_latest_sample_of_each_whole_bucket(db: Database) -> None:
    node = await add_node(db)
    await store(db, every(node, T0, 40, 60))  # 12:00 .. 12:39, one a minute
    # 12:37:30 rounds down to 12:35: buckets 12:00, 12:05, ... 12:30 (7 of them) are thinned.
    older_than = T0 + timedelta(minutes=37, seconds=30)

    assert await health.downsample(db, older_than, bucket_sec=300) == 7 * 4

    expected = [(T0 + timedelta(minutes=5 * b + 4), True) for b in range(7)]
    expected += [(T0 + timedelta(minutes=m), False) for m in range(35, 40)]
    assert await stored(db, node) == expected
    # Idempotent: nothing left to thin, nothing changes.
    assert await health.downsample(db, older_than, bucket_sec=300) == 0
    assert await stored(db, node) == expected


async def test_downsample_keeps_one_per_bucket_when_samples_arrive_late(db: Database) -> None:
    node = await add_node(db)
    await store(db, every(node, T0, 10, 60))  # 12:00 .. 12:09
    older_than = T0 + timedelta(minutes=10)
    assert await health.downsample(db, older_than, bucket_sec=300) == 8
    # Late samples in the node's last thinned bucket (12:05): one after the kept 12:09, one
    # before it. The newer one wins; the bucket still holds one sample.
    late = [T0 + timedelta(minutes=9, seconds=30), T0 + timedelta(minutes=5, seconds=10)]
    await store(db, [sample(node, at) for at in late])

    assert await health.downsample(db, older_than, bucket_sec=300) == 2

    assert await stored(db, node) == [
        (T0 + timedelta(minutes=4), True),
        (T0 + timedelta(minutes=9, seconds=30), True),
    ]


async def test_downsample_pages_through_all_nodes(db: Database) -> None:
    nodes = [await add_node(db) for _ in range(3)]
    for node in nodes:
        await store(db, every(node, T0, 5, 60))

    removed = await health.downsample(db, T0 + timedelta(hours=1), 300, batch_nodes=2)

    assert removed == 3 * 4
    for node in nodes:
        assert await stored(db, node) == [(T0 + timedelta(minutes=4), True)]
