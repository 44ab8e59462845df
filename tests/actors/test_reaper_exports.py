"""The Reaper's object-storage tasks on real PostgreSQL and S3, with injected time: due exports
(objects before rows, bounded batches, storage outages), stale render segments, idle replicas."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID, uuid4

import attrs
import pytest
import trio

from flatrender.actors import retention
from flatrender.actors.reaper import Reaper, ReapTask
from flatrender.actors.retention import retention_tasks
from flatrender.actors.system import ActorSystem
from flatrender.config import Config, ExportsConfig, JobsConfig
from flatrender.persistence import exports
from flatrender.persistence.db import Database
from flatrender.storage import MinioStore, ObjectInfo, ObjectStore, StorageUnavailable
from tests.http.test_exports import make_export, unreachable_store
from tests.http.test_renders import make_project

NOW = datetime(2031, 3, 1, 12, 0, tzinfo=UTC)


@attrs.define
class WatchedStore:
    """The real store; every delete records whether the export's row still existed then."""

    inner: MinioStore
    db: Database
    fail_on: str | None = None  # a key whose deletion fails as if storage were down
    deletes: list[tuple[str, bool]] = attrs.Factory(list)

    async def delete(self, key: str) -> None:
        if key.startswith("exports/"):
            export_id = UUID(key.split("/")[1])
            row_present = await exports.get(self.db, export_id) is not None
            self.deletes.append((key, row_present))
        if key == self.fail_on:
            raise StorageUnavailable("simulated outage")
        await self.inner.delete(key)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


@attrs.define
class ScopedStore:
    """The real store, listing only keys under ``prefix``: the session's bucket is shared, and
    a reap with a cut-off in the future must not touch (nor count) other tests' objects."""

    inner: Any
    prefix: str | tuple[str, ...]

    async def list_prefix(self, prefix: str) -> list[ObjectInfo]:
        return [o for o in await self.inner.list_prefix(prefix) if o.key.startswith(self.prefix)]

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


@pytest.fixture
def store(config: Config) -> MinioStore:
    return MinioStore(config.s3)


def tasks(
    db: Database,
    store: Any,
    config: Config,
    batch: int = 100,
    scope: str | tuple[str, ...] = "exports/",
) -> list[ReapTask]:
    """Every retention task; the listing passes (segments, unrecorded replicas) see only
    ``scope`` (exports are found by their rows, in this test's own database)."""
    cfg = attrs.evolve(config, exports=ExportsConfig(reap_batch_size=batch))
    return retention_tasks(db, ScopedStore(store, scope), lambda: cfg)


async def due_export(db: Database, store: ObjectStore, due: datetime) -> exports.ExportRow:
    return await make_export(
        db, store, uuid4(), produced=due - timedelta(days=3), keep=timedelta(days=3)
    )


async def all_gone(db: Database, store: ObjectStore, row: exports.ExportRow) -> bool:
    return (
        await exports.get(db, row.id) is None
        and await exports.files_of(db, [row.id]) == []
        and await store.list_prefix(f"exports/{row.id}/") == []
    )


async def intact(db: Database, store: ObjectStore, row: exports.ExportRow) -> bool:
    return (
        await exports.get(db, row.id) == row
        and len(await exports.files_of(db, [row.id])) == 2
        and await store.stat(row.path) is not None
    )


# ------------------------------------------------------------------ due exports


async def test_due_exports_lose_objects_before_rows_with_a_log_line_each(
    db: Database, store: MinioStore, config: Config, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="flatrender.retention")
    due = [await due_export(db, store, NOW - timedelta(hours=h)) for h in (0, 5)]
    later = await due_export(db, store, NOW + timedelta(seconds=1))
    watched = WatchedStore(store, db)
    reaper = Reaper(tasks(db, watched, config), now=lambda: NOW)

    removed = await reaper.run_once()

    assert removed["exports_expired"] == 2
    for row in due:
        assert await all_gone(db, store, row)
    assert await intact(db, store, later)
    # Each export's video and thumbnail went while its row was still there.
    assert sorted(watched.deletes) == sorted(
        (key, True) for row in due for key in (row.path, row.image)
    )
    lines = [
        r.getMessage()
        for r in caplog.records
        if r.name == "flatrender.retention" and r.getMessage().startswith("export ")
    ]
    assert sorted(lines) == sorted(
        f"export {row.id} deleted: due {row.auto_delete_date.isoformat()} (owner {row.user_id})"
        for row in due
    )


async def test_due_exports_go_in_bounded_batches(
    db: Database, store: MinioStore, config: Config, monkeypatch: pytest.MonkeyPatch
) -> None:
    rows = [await due_export(db, store, NOW - timedelta(minutes=m)) for m in range(5)]
    sizes: list[int] = []
    real_lock_due = exports.lock_due

    async def counted(
        conn: Any, now: datetime, limit: int, *, skip: Any = ()
    ) -> list[exports.ExportRow]:
        assert limit == 2
        found = await real_lock_due(conn, now, limit, skip=skip)
        sizes.append(len(found))
        return found

    monkeypatch.setattr(exports, "lock_due", counted)
    assert await retention.reap_due_exports(db, store, NOW, 2) == 5
    assert sizes == [2, 2, 1]
    for row in rows:
        assert await all_gone(db, store, row)


async def test_storage_down_keeps_every_row_and_the_next_round_finishes(
    db: Database, store: MinioStore, config: Config
) -> None:
    rows = [await due_export(db, store, NOW - timedelta(days=1)) for _ in range(3)]
    down = Reaper(tasks(db, unreachable_store(config), config), now=lambda: NOW)

    assert (await down.run_once()).get("exports_expired", 0) == 0
    for row in rows:
        assert await intact(db, store, row)

    back = Reaper(tasks(db, store, config), now=lambda: NOW)
    assert (await back.run_once())["exports_expired"] == 3
    for row in rows:
        assert await all_gone(db, store, row)


async def test_a_failure_midway_keeps_the_row_of_what_was_not_fully_deleted(
    db: Database, store: MinioStore, config: Config
) -> None:
    row = await due_export(db, store, NOW - timedelta(days=1))
    watched = WatchedStore(store, db, fail_on=row.path)
    assert await retention.reap_due_exports(db, watched, NOW, 10) == 0
    # Its thumbnail may be gone already, but the rows still name every object.
    assert await exports.get(db, row.id) == row
    assert len(await exports.files_of(db, [row.id])) == 2
    assert await store.stat(row.path) is not None
    assert await retention.reap_due_exports(db, store, NOW, 10) == 1
    assert await all_gone(db, store, row)


async def test_rounds_delete_an_export_in_the_first_round_past_its_date(
    db: Database, store: MinioStore, config: Config
) -> None:
    """Injected wall time, one round a minute; the export is due at 90 s. (The loop's own
    timing is tested with the autojump clock in test_reaper.py: here asyncpg's timeouts would
    run on that clock too.)"""
    row = await due_export(db, store, NOW + timedelta(seconds=90))
    now = [NOW]
    reaper = Reaper(tasks(db, store, config), now=lambda: now[0])
    removed = []
    for minute in range(3):
        now[0] = NOW + timedelta(minutes=minute)
        removed.append((await reaper.run_once())["exports_expired"])
        if minute < 2:
            assert await intact(db, store, row)
    assert removed == [0, 0, 1]
    assert await all_gone(db, store, row)


async def test_an_extension_in_progress_is_not_reaped(
    db: Database, store: MinioStore, config: Config
) -> None:
    """A locked row (an extension or a delete holding it) is skipped, not waited for."""
    row = await due_export(db, store, NOW - timedelta(days=1))
    async with db.transaction() as conn:
        assert await exports.lock(conn, row.id) == row
        assert await retention.reap_due_exports(db, store, NOW, 10) == 0
        await exports.move_delete_date(conn, row.id, 30)
    assert await retention.reap_due_exports(db, store, NOW, 10) == 0
    assert await intact(
        db, store, attrs.evolve(row, auto_delete_date=row.auto_delete_date + timedelta(days=30))
    )


# ------------------------------------------------------------------ segments and replicas

JOB_SQL = """
INSERT INTO render_jobs (id, user_id, saved_project_id, project_version, name, priority_queue,
    price_type, quality, resolution, frame_rate, duration_sec, end_frame, step, completed_at)
VALUES ($1, $2, $3, $4, 'Promo', 'Cash', 'Cash', 'Medium', 'FullHD', 30, 10, 299, $5, $6)
"""


async def add_job(
    db: Database, project_id: UUID, step: str, completed_at: datetime | None, version: int = 1
) -> UUID:
    job_id = uuid4()
    await db.execute(JOB_SQL, job_id, uuid4(), project_id, version, step, completed_at)
    return job_id


async def put_segments(store: ObjectStore, job_id: UUID, n: int = 2) -> list[str]:
    keys = [f"renders/{job_id}/{uuid4()}.mp4" for _ in range(n)]
    for key in keys:
        await store.put_bytes(key, b"segment")
    return keys


async def present(store: ObjectStore, keys: Sequence[str]) -> list[bool]:
    return [await store.stat(k) is not None for k in keys]


async def test_segments_go_once_their_job_ended_past_the_grace_or_has_no_row(
    db: Database, store: MinioStore, config: Config
) -> None:
    # The objects' own timestamps are real, so this test's "now" is two days ahead of real time.
    now = datetime.now(UTC) + timedelta(days=2)
    grace = timedelta(hours=config.jobs.segment_grace_hours)
    project = await make_project(db, uuid4())
    old_done = await put_segments(store, await add_job(db, project, "Completed", now - 2 * grace))
    old_failed = await put_segments(store, await add_job(db, project, "Failed", now - 2 * grace))
    recent = await put_segments(store, await add_job(db, project, "Cancelled", now - grace / 2))
    running = await put_segments(store, await add_job(db, project, "Rendering", None))
    orphan_job = uuid4()
    orphans = await put_segments(store, orphan_job)
    odd = f"renders/not-a-job-{uuid4()}/x.mp4"
    await store.put_bytes(odd, b"?")
    mine = tuple(f"renders/{k.split('/')[1]}/" for k in old_done + old_failed + recent + running)
    scoped = ScopedStore(store, (*mine, f"renders/{orphan_job}/", odd))

    removed = await retention.reap_segments(db, scoped, now - grace, 1000)

    assert removed == 6
    assert await present(store, old_done + old_failed + orphans) == [False] * 6
    assert await present(store, recent + running + [odd]) == [True] * 5
    await store.delete(odd)


async def test_segment_reaping_stops_at_its_limit(db: Database, store: MinioStore) -> None:
    project = await make_project(db, uuid4())
    now = datetime.now(UTC) + timedelta(days=2)
    job_id = await add_job(db, project, "Completed", now - timedelta(days=1))
    keys = await put_segments(store, job_id, 3)
    scoped = ScopedStore(store, f"renders/{job_id}/")
    counts = [await retention.reap_segments(db, scoped, now, 2) for _ in range(3)]
    assert counts == [2, 1, 0]
    assert await present(store, keys) == [False] * 3


REPLICA_SQL = """
INSERT INTO replicas (saved_project_id, project_version, storage_key, created_at)
VALUES ($1, $2, $3, $4)
"""


async def add_replica(db: Database, store: ObjectStore, project: UUID, version: int) -> str:
    key = f"replicas/{project}/{version}.aep"
    await store.put_bytes(key, b"aep")
    await db.execute(REPLICA_SQL, project, version, key, NOW - timedelta(days=30))
    return key


async def replica_rows(db: Database, project: UUID) -> list[int]:
    records = await db.fetch(
        "SELECT project_version FROM replicas WHERE saved_project_id = $1 ORDER BY 1", project
    )
    return [r["project_version"] for r in records]


async def test_replicas_go_once_no_job_of_their_version_ran_within_the_grace(
    db: Database, store: MinioStore, config: Config
) -> None:
    grace = timedelta(days=config.jobs.replica_grace_days)
    project = await make_project(db, uuid4())
    idle = await add_replica(db, store, project, 1)
    await add_job(db, project, "Completed", NOW - 2 * grace, version=1)
    in_use = await add_replica(db, store, project, 2)
    await add_job(db, project, "Completed", NOW - 2 * grace, version=2)
    await add_job(db, project, "Queued", None, version=2)
    recent = await add_replica(db, store, project, 3)
    await add_job(db, project, "Completed", NOW - grace / 2, version=3)
    unused = await add_replica(db, store, project, 4)  # built, never rendered: idle as well

    reaper = Reaper(tasks(db, store, config, scope=f"replicas/{project}/"), now=lambda: NOW)
    assert (await reaper.run_once())["replicas"] == 2

    assert await present(store, [idle, unused]) == [False, False]
    assert await present(store, [in_use, recent]) == [True, True]
    assert await replica_rows(db, project) == [2, 3]


async def test_replica_objects_no_row_names_go_after_the_grace(
    db: Database, store: MinioStore
) -> None:
    project = await make_project(db, uuid4())
    recorded = await add_replica(db, store, project, 1)
    await add_job(db, project, "Rendering", None, version=1)
    unrecorded = f"replicas/{project}/2.aep"
    await store.put_bytes(unrecorded, b"aep")
    real_now = datetime.now(UTC)
    scoped = ScopedStore(store, f"replicas/{project}/")
    # Younger than the cut-off's grace: kept (a node may be uploading it for a Preparing job).
    await retention.reap_replicas(db, scoped, real_now - timedelta(days=1), 100)
    assert await present(store, [recorded, unrecorded]) == [True, True]
    assert await retention.reap_replicas(db, scoped, real_now + timedelta(days=1), 100) == 1
    assert await present(store, [recorded, unrecorded]) == [True, False]
    assert await replica_rows(db, project) == [1]


async def test_replica_rows_stay_while_storage_is_down(
    db: Database, store: MinioStore, config: Config
) -> None:
    project = await make_project(db, uuid4())
    key = await add_replica(db, store, project, 1)
    cutoff = NOW - timedelta(days=1)
    mine = f"replicas/{project}/"
    down = ScopedStore(unreachable_store(config), mine)
    assert await retention.reap_replicas(db, down, cutoff, 10) == 0
    assert await replica_rows(db, project) == [1]
    assert await retention.reap_replicas(db, ScopedStore(store, mine), cutoff, 10) == 1
    assert await replica_rows(db, project) == []
    assert await present(store, [key]) == [False]


async def test_retention_tasks_reject_nonsense(
    db: Database, store: MinioStore, config: Config
) -> None:
    no_batch = attrs.evolve(config, exports=ExportsConfig(reap_batch_size=0))
    no_grace = attrs.evolve(config, jobs=JobsConfig(segment_grace_hours=0))
    with pytest.raises(ValueError):
        retention_tasks(db, store, lambda: no_batch)
    with pytest.raises(ValueError):
        retention_tasks(db, store, lambda: no_grace)


async def test_the_actor_systems_reaper_runs_the_retention_tasks(
    db: Database, store: MinioStore, actor_system: ActorSystem
) -> None:
    """One round of the system's own Reaper (real clock) removes an expired export, and its
    segment and replica tasks run without failing (a failed task is absent from the round)."""
    reaper = actor_system.reaper
    with trio.fail_after(10):  # its first round, begun at start-up, is over
        while reaper.statistics().rounds < 1:  # noqa: ASYNC110
            await trio.sleep(0.01)
    row = await due_export(db, store, datetime.now(UTC) - timedelta(minutes=1))

    removed = await reaper.run_once()

    assert removed["exports_expired"] == 1
    assert {"render_segments", "replicas"} <= set(removed)
    assert await all_gone(db, store, row)
