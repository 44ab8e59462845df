"""Retention when object storage refuses one object for good (403 AccessDenied: a plain
StorageError, not StorageUnavailable): that item is logged and skipped, its rows stay, and the
rest of the round goes on. Real PostgreSQL and S3; only the refusal is simulated."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from uuid import uuid4

import attrs
import pytest

from flatrender.actors import retention
from flatrender.config import Config
from flatrender.persistence.db import Database
from flatrender.storage import MinioStore, StorageError
from tests.actors.test_reaper_exports import (
    NOW,
    ScopedStore,
    add_job,
    add_replica,
    all_gone,
    due_export,
    intact,
    present,
    put_segments,
    replica_rows,
)
from tests.http.test_renders import make_project


@pytest.fixture
def store(config: Config) -> MinioStore:
    return MinioStore(config.s3)


@attrs.define
class RefusingStore(ScopedStore):
    """Refuses to delete the keys in ``refused``, as S3 does with 403 AccessDenied."""

    refused: frozenset[str] = frozenset()
    attempts: list[str] = attrs.Factory(list)

    async def delete(self, key: str) -> None:
        self.attempts.append(key)
        if key in self.refused:
            raise StorageError(f"S3 operation failed; code: AccessDenied, key: {key}")
        await self.inner.delete(key)


async def test_an_export_storage_refuses_is_skipped_and_the_others_still_go(
    db: Database, store: MinioStore
) -> None:
    first = await due_export(db, store, NOW - timedelta(days=2))  # sorts first every round
    others = [await due_export(db, store, NOW - timedelta(days=1)) for _ in range(3)]
    refusing = RefusingStore(store, "exports/", refused=frozenset({first.path}))

    # Batches of one: the refused export must not end the round, nor come back in it.
    assert await retention.reap_due_exports(db, refusing, NOW, 1) == 3
    assert await intact(db, store, first)
    for row in others:
        assert await all_gone(db, store, row)
    assert refusing.attempts.count(first.path) == 1
    # Storage relents: the next round deletes it.
    assert await retention.reap_due_exports(db, store, NOW, 1) == 1
    assert await all_gone(db, store, first)


async def test_a_segment_storage_refuses_is_skipped_within_the_limit(
    db: Database, store: MinioStore
) -> None:
    now = datetime.now(UTC) + timedelta(days=2)
    project = await make_project(db, uuid4())
    job_id = await add_job(db, project, "Completed", now - timedelta(days=1))
    keys = sorted(await put_segments(store, job_id, 3))
    refusing = RefusingStore(store, f"renders/{job_id}/", refused=frozenset({keys[0]}))

    assert await retention.reap_segments(db, refusing, now, 2) == 2
    assert await present(store, keys) == [True, False, False]
    assert refusing.attempts == keys


async def test_a_replica_storage_refuses_keeps_its_row_and_the_others_go(
    db: Database, store: MinioStore
) -> None:
    project = await make_project(db, uuid4())
    refused = await add_replica(db, store, project, 1)
    other = await add_replica(db, store, project, 2)
    await db.execute(  # this test's cut-off is in real time, like the unrecorded objects'
        "UPDATE replicas SET created_at = now() - interval '30 days' WHERE saved_project_id = $1",
        project,
    )
    unrecorded = [f"replicas/{project}/{v}.aep" for v in (3, 4)]
    for key in unrecorded:
        await store.put_bytes(key, b"aep")
    refusing = RefusingStore(
        store, f"replicas/{project}/", refused=frozenset({refused, unrecorded[0]})
    )
    cutoff = datetime.now(UTC) + timedelta(days=1)  # every object here is older than this

    assert await retention.reap_replicas(db, refusing, cutoff, 10) == 2
    assert await replica_rows(db, project) == [1]
    assert await present(store, [refused, other, *unrecorded]) == [True, False, True, False]
