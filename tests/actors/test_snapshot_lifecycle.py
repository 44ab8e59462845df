"""A snapshot's life outside the render itself, on real PostgreSQL and S3: its job ending badly
fails it (with the refund of any job), and the Reaper removes it once expired, objects first."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from uuid import UUID, uuid4

import attrs
import trio

from flatrender.actors import job
from flatrender.actors.reaper import Reaper, snapshot_tasks
from flatrender.actors.system import ActorSystem
from flatrender.config import Config
from flatrender.http.app import create_app
from flatrender.http.common import AppState
from flatrender.persistence import ledger
from flatrender.persistence import snapshots as snapshot_db
from flatrender.persistence.db import Database
from flatrender.storage import MinioStore, StorageError
from tests.helpers import Tokens, bearer
from tests.http.test_snapshots import ask, make_project

NOW = datetime(2030, 6, 1, 12, tzinfo=UTC)


async def test_a_cancelled_snapshot_job_fails_the_snapshot_and_refunds(
    config: Config, db: Database, actor_system: ActorSystem, tokens: Tokens
) -> None:
    pricing = attrs.evolve(
        config.pricing, price_type_factor={**config.pricing.price_type_factor, "Snapshot": 300.0}
    )
    priced = attrs.evolve(config, pricing=pricing)
    app = create_app(AppState(priced, db, MinioStore(config.s3), actor_system))
    project = await make_project(db, tokens.user_id)
    await ledger.credit(db, tokens.user_id, 1000)
    async with app.test_app() as test_app:
        api = test_app.test_client()
        response = await api.post("/v1/snapshots", json=ask(project), headers=bearer(tokens.user))
        assert response.status_code == 202
        sid = UUID((await response.get_json())["snapshot_id"])
        assert await ledger.balance(db, tokens.user_id) == 850

        # No node anywhere: the job waits for a replica builder until an operator ends it.
        refund = await actor_system.jobs.call(sid, lambda reply: job.Cancel("operator", reply))

        assert refund == 150
        assert await ledger.balance(db, tokens.user_id) == 1000
        got = await (await api.get(f"/v1/snapshots/{sid}", headers=bearer(tokens.user))).get_json()
        assert got["status"] == "Failed" and got["completed_at"] and got["image_url"] is None
        step = await db.fetchval("SELECT step FROM render_jobs WHERE id = $1", sid)
        assert step == "Cancelled"

        # A Failed snapshot frees its key: the next request renders again.
        again = await api.post("/v1/snapshots", json=ask(project), headers=bearer(tokens.user))
        body = await again.get_json()
        assert again.status_code == 202 and body["snapshot_id"] != str(sid)
        assert body["status"] in ("Pending", "Rendering")


@attrs.define
class WatchedStore:
    """The real store, recording for each deletion whether the snapshot's row still existed."""

    inner: MinioStore
    db: Database
    deletions: list[tuple[str, bool]] = attrs.Factory(list)

    async def delete(self, key: str) -> None:
        sid = UUID(key.split("/")[1])
        exists = await self.db.fetchval("SELECT count(*) FROM snapshots WHERE id = $1", sid)
        self.deletions.append((key, exists == 1))
        await self.inner.delete(key)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


async def add_snapshot(
    db: Database,
    store: MinioStore,
    project: UUID,
    owner: UUID,
    status: str,
    expires: datetime,
    frame: int,
) -> UUID:
    sid = uuid4()
    for key in (snapshot_db.image_key(sid), snapshot_db.thumbnail_key(sid)):
        await store.put_bytes(key, b"\x89PNG not really", "image/png")
    await db.execute(
        "INSERT INTO snapshots (id, user_id, saved_project_id, project_version, scene_key, "
        "frame_number, status, image_key, thumbnail_key, requested_at, expires_at) "
        "VALUES ($1, $2, $3, 1, 'main', $4, $5, $6, $7, $8, $9)",
        sid,
        owner,
        project,
        frame,  # one live row per frame
        status,
        snapshot_db.image_key(sid),
        snapshot_db.thumbnail_key(sid),
        expires - timedelta(hours=24),
        expires,
    )
    return sid


async def test_reaper_removes_expired_snapshots_objects_before_rows(
    config: Config, db: Database, tokens: Tokens, tmp_path: Path
) -> None:
    store = MinioStore(config.s3)
    project = await make_project(db, tokens.user_id)
    past, future = NOW - timedelta(minutes=1), NOW + timedelta(minutes=1)
    expired_cached = await add_snapshot(db, store, project, tokens.user_id, "Cached", past, 30)
    expired_failed = await add_snapshot(db, store, project, tokens.user_id, "Failed", past, 31)
    # A render in progress is its job's to end, whatever its expiry says.
    rendering = await add_snapshot(db, store, project, tokens.user_id, "Rendering", past, 32)
    fresh = await add_snapshot(db, store, project, tokens.user_id, "Cached", future, 33)
    watched = WatchedStore(store, db)
    reaper = Reaper(snapshot_tasks(db, watched, batch=1), now=lambda: NOW)  # type: ignore[arg-type]

    assert await reaper.run_once() == {"snapshot_expiry": 2}

    gone = {expired_cached, expired_failed}
    assert {UUID(key.split("/")[1]) for key, _ in watched.deletions} == gone
    assert len(watched.deletions) == 4 and all(existed for _, existed in watched.deletions)
    left = {r["id"] for r in await db.fetch("SELECT id FROM snapshots")}
    assert left == {rendering, fresh}
    for sid in gone:
        assert await store.stat(snapshot_db.image_key(sid)) is None
        assert await store.stat(snapshot_db.thumbnail_key(sid)) is None
    assert await store.stat(snapshot_db.image_key(fresh)) is not None
    assert await reaper.run_once() == {"snapshot_expiry": 0}


@attrs.define
class RefusingStore:
    """The real store, refusing to delete the keys of ``refused`` as S3 does with 403."""

    inner: MinioStore
    refused: UUID
    attempts: list[str] = attrs.Factory(list)

    async def delete(self, key: str) -> None:
        self.attempts.append(key)
        if key.split("/")[1] == str(self.refused):
            raise StorageError(f"S3 operation failed; code: AccessDenied, key: {key}")
        await self.inner.delete(key)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


async def test_a_snapshot_storage_refuses_keeps_its_row_and_the_others_go(
    config: Config, db: Database, tokens: Tokens
) -> None:
    store = MinioStore(config.s3)
    project = await make_project(db, tokens.user_id)
    # The oldest expiry: the first of every batch, every round.
    first = await add_snapshot(
        db, store, project, tokens.user_id, "Cached", NOW - timedelta(hours=1), 30
    )
    others = [
        await add_snapshot(
            db, store, project, tokens.user_id, "Cached", NOW - timedelta(minutes=m), 31 + m
        )
        for m in (1, 2)
    ]
    refusing = RefusingStore(store, first)
    reaper = Reaper(snapshot_tasks(db, refusing, batch=1), now=lambda: NOW)  # type: ignore[arg-type]

    assert await reaper.run_once() == {"snapshot_expiry": 2}
    assert {r["id"] for r in await db.fetch("SELECT id FROM snapshots")} == {first}
    assert refusing.attempts.count(snapshot_db.image_key(first)) == 1  # once in the round
    for sid in others:
        assert await store.stat(snapshot_db.image_key(sid)) is None


async def test_the_actor_systems_reaper_removes_an_expired_snapshot(
    actor_system: ActorSystem, config: Config, db: Database, tokens: Tokens
) -> None:
    """One round of the system's own Reaper (real clock), not just its list of task names."""
    reaper = actor_system.reaper
    with trio.fail_after(10):  # its first round, begun at start-up, is over
        while reaper.statistics().rounds < 1:  # noqa: ASYNC110
            await trio.sleep(0.01)
    store = MinioStore(config.s3)
    project = await make_project(db, tokens.user_id)
    expired = datetime.now(UTC) - timedelta(minutes=1)
    sid = await add_snapshot(db, store, project, tokens.user_id, "Cached", expired, 30)

    assert (await reaper.run_once())["snapshot_expiry"] == 1
    assert await db.fetchval("SELECT count(*) FROM snapshots WHERE id = $1", sid) == 0
    assert await store.stat(snapshot_db.image_key(sid)) is None
