"""Retention racing the jobs it must not hurt, on real PostgreSQL and S3: a replica picked as
idle while a job for its version is submitted, an unrecorded replica rebuilt while it is listed."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID, uuid4

import attrs
import pytest
import trio

from flatrender.actors import retention
from flatrender.actors.system import ActorSystem
from flatrender.domain import job_steps as js
from flatrender.persistence import cleanup
from flatrender.persistence.db import Database
from flatrender.storage import MinioStore, ObjectInfo
from tests.actors.test_job_actor import start_actor
from tests.actors.test_reaper_exports import (
    ScopedStore,
    add_job,
    add_replica,
    present,
    replica_rows,
)
from tests.http.test_renders import make_project

NOW = datetime(2031, 3, 1, 12, 0, tzinfo=UTC)
CUTOFF = NOW - timedelta(days=7)  # the replicas of add_replica are 30 days old: idle


@pytest.fixture
def store(config: Any) -> MinioStore:
    return MinioStore(config.s3)


async def until(condition: Callable[[], Awaitable[bool]], within: float = 10.0) -> None:
    """Poll a database condition (no event to wait on: it changes in other connections)."""
    with trio.fail_after(within):
        while True:
            if await condition():
                return
            await trio.sleep(0.01)


async def lock_waiters(db: Database) -> int:
    """Statements of this database waiting for a row lock right now."""
    return int(
        await db.fetchval(
            "SELECT count(*) FROM pg_stat_activity "
            "WHERE datname = current_database() AND wait_event_type = 'Lock'"
        )
    )


async def step_of(db: Database, job_id: UUID) -> str:
    return str(await db.fetchval("SELECT step FROM render_jobs WHERE id = $1", job_id))


async def test_a_job_submitted_while_its_replica_is_being_reaped_rebuilds_it(
    db: Database, store: MinioStore, actor_system: ActorSystem, nursery: trio.Nursery
) -> None:
    """The Reaper holds replica R (idle) and is deleting its object when a job for R's version
    is submitted. Its actor must not skip Preparing on R: it waits for the Reaper's transaction
    and, R gone, builds a new replica."""

    async def first_round_done() -> bool:  # the system's own Reaper must not take R itself
        return actor_system.reaper.statistics().rounds >= 1

    await until(first_round_done)
    project = await make_project(db, uuid4())
    key = await add_replica(db, store, project, 1)
    submitted: list[UUID] = []

    @attrs.define
    class SubmitDuringDelete(ScopedStore):
        async def delete(self, k: str) -> None:
            if k == key and not submitted:
                job_id = await add_job(db, project, "Queued", None, version=1)
                submitted.append(job_id)
                await start_actor(nursery, actor_system, job_id)

                async def read_or_waiting() -> bool:  # the bug: it read R; the fix: it waits
                    return await step_of(db, job_id) != "Queued" or await lock_waiters(db) > 0

                await until(read_or_waiting)
            await self.inner.delete(k)

    scoped = SubmitDuringDelete(store, f"replicas/{project}/")
    assert await retention.reap_replicas(db, scoped, CUTOFF, 10) == 1

    assert await present(store, [key]) == [False] and await replica_rows(db, project) == []

    async def decided() -> bool:
        return await step_of(db, submitted[0]) != "Queued"

    await until(decided)
    assert await step_of(db, submitted[0]) == js.JobStep.PREPARING.value


async def test_a_replica_whose_version_got_a_job_after_it_was_picked_is_not_idle(
    db: Database, store: MinioStore
) -> None:
    """The second look after locking sees a job committed since the first one."""
    project = await make_project(db, uuid4())
    await add_replica(db, store, project, 1)
    await add_replica(db, store, project, 2)
    async with db.transaction() as conn:
        locked = await conn.fetch(cleanup.LOCK_IDLE_REPLICAS, CUTOFF, 10)
        picked = [
            cleanup.IdleReplica(r["saved_project_id"], r["project_version"], r["storage_key"])
            for r in locked
            if r["saved_project_id"] == project
        ]
        assert [r.project_version for r in picked] == [1, 2]
        await add_job(db, project, "Queued", None, version=1)  # another connection commits
        assert [r.project_version for r in await cleanup.still_idle(conn, CUTOFF, picked)] == [2]


# ------------------------------------------------------------------ unrecorded replica objects


async def test_an_unrecorded_replica_of_a_version_with_a_live_job_is_kept(
    db: Database, store: MinioStore
) -> None:
    """A job in Preparing builds at the fixed key: the object there is its build (or about to be
    replaced by it), however old the object looks, until the job ends."""
    project = await make_project(db, uuid4())
    key, odd = f"replicas/{project}/1.aep", f"replicas/{project}/99999999999.aep"
    for k in (key, odd):
        await store.put_bytes(k, b"aep")
    job_id = await add_job(db, project, "Preparing", None, version=1)
    scoped = ScopedStore(store, f"replicas/{project}/")
    future = datetime.now(UTC) + timedelta(days=1)  # every object here is older than this

    assert await retention.reap_replicas(db, scoped, future, 10) == 1  # the odd key only
    assert await present(store, [key, odd]) == [True, False]

    await db.execute("UPDATE render_jobs SET step = 'Failed' WHERE id = $1", job_id)
    assert await retention.reap_replicas(db, scoped, future, 10) == 1
    assert await present(store, [key]) == [False]


@attrs.define
class StaleListing(ScopedStore):
    """Lists every object as 30 days old: the listing came before a rebuild replaced them."""

    async def list_prefix(self, prefix: str) -> list[ObjectInfo]:
        listed = await ScopedStore.list_prefix(self, prefix)
        old = datetime.now(UTC) - timedelta(days=30)
        return [attrs.evolve(o, last_modified=old) for o in listed]


async def test_an_unrecorded_replica_rebuilt_since_the_listing_is_kept(
    db: Database, store: MinioStore
) -> None:
    project = await make_project(db, uuid4())
    key = f"replicas/{project}/1.aep"
    await store.put_bytes(key, b"fresh build")
    cutoff = datetime.now(UTC) - timedelta(days=1)

    stale = StaleListing(store, f"replicas/{project}/")
    assert await retention.reap_replicas(db, stale, cutoff, 10) == 0
    assert await present(store, [key]) == [True]
