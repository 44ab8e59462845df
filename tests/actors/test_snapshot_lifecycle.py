"""A snapshot's life outside the render itself, on real PostgreSQL and S3: its job ending badly
fails it (with the refund of any job), and the Reaper removes it once expired, objects first."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from unittest.mock import Mock
from uuid import UUID, uuid4

import attrs
import trio

from flatrender import media
from flatrender.actors import job
from flatrender.actors.job_effects import JobEffects
from flatrender.actors.reaper import Reaper, snapshot_deadline_tasks, snapshot_tasks
from flatrender.actors.system import ActorSystem
from flatrender.actors.validation import check_still
from flatrender.config import Config
from flatrender.domain import job_steps as js
from flatrender.http.app import create_app
from flatrender.http.common import AppState
from flatrender.persistence import job_state, ledger
from flatrender.persistence import snapshots as snapshot_db
from flatrender.persistence.db import Database
from flatrender.storage import MinioStore, StorageError
from tests.actors.test_health_writer import add_node
from tests.helpers import Tokens, bearer
from tests.http.test_snapshots import ask, image_of, make_project

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
    for key in (image_of(sid), snapshot_db.thumbnail_key(sid)):
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
        image_of(sid),
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
        assert await store.stat(image_of(sid)) is None
        assert await store.stat(snapshot_db.thumbnail_key(sid)) is None
    assert await store.stat(image_of(fresh)) is not None
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
    assert refusing.attempts.count(image_of(first)) == 1  # once in the round
    for sid in others:
        assert await store.stat(image_of(sid)) is None


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
    assert await store.stat(image_of(sid)) is None


def priced_app(config: Config, db: Database, actor_system: ActorSystem) -> Any:
    pricing = attrs.evolve(
        config.pricing, price_type_factor={**config.pricing.price_type_factor, "Snapshot": 300.0}
    )
    priced = attrs.evolve(config, pricing=pricing)
    return create_app(AppState(priced, db, MinioStore(config.s3), actor_system))


async def test_a_snapshot_past_its_render_deadline_fails_refunds_and_frees_its_key(
    config: Config, db: Database, actor_system: ActorSystem, tokens: Tokens
) -> None:
    project = await make_project(db, tokens.user_id)
    await ledger.credit(db, tokens.user_id, 1000)
    async with priced_app(config, db, actor_system).test_app() as test_app:
        api = test_app.test_client()
        response = await api.post("/v1/snapshots", json=ask(project), headers=bearer(tokens.user))
        sid = UUID((await response.get_json())["snapshot_id"])
        assert await ledger.balance(db, tokens.user_id) == 850
        requested = await db.fetchval("SELECT requested_at FROM snapshots WHERE id = $1", sid)
        # No node anywhere: the job waits for a replica builder that never comes.
        tasks = snapshot_deadline_tasks(db, actor_system.abort_job, lambda: 120.0)
        before = Reaper(tasks, now=lambda: requested + timedelta(seconds=119))
        after = Reaper(tasks, now=lambda: requested + timedelta(seconds=121))

        assert await before.run_once() == {"snapshot_render_timeout": 0}
        shared = await api.post("/v1/snapshots", json=ask(project), headers=bearer(tokens.user))
        assert (await shared.get_json())["snapshot_id"] == str(sid)

        assert await after.run_once() == {"snapshot_render_timeout": 1}

        got = await (await api.get(f"/v1/snapshots/{sid}", headers=bearer(tokens.user))).get_json()
        assert got["status"] == "Failed" and got["completed_at"]
        job_row = await db.fetchrow(
            "SELECT step, failed_message FROM render_jobs WHERE id = $1", sid
        )
        assert job_row["step"] == "Failed"
        assert "not rendered within 120 s" in job_row["failed_message"]
        assert await ledger.balance(db, tokens.user_id) == 1000
        assert await after.run_once() == {"snapshot_render_timeout": 0}  # refunded once
        assert await ledger.balance(db, tokens.user_id) == 1000

        again = await api.post("/v1/snapshots", json=ask(project), headers=bearer(tokens.user))
        body = await again.get_json()
        assert again.status_code == 202 and body["snapshot_id"] != str(sid)
        assert body["status"] in ("Pending", "Rendering")
        assert await ledger.balance(db, tokens.user_id) == 850  # the new render is charged


async def test_an_admin_cancels_a_snapshot_job_its_user_cannot_see_as_a_render(
    config: Config, db: Database, actor_system: ActorSystem, tokens: Tokens
) -> None:
    project = await make_project(db, tokens.user_id)
    await ledger.credit(db, tokens.user_id, 1000)
    async with priced_app(config, db, actor_system).test_app() as test_app:
        api = test_app.test_client()
        response = await api.post("/v1/snapshots", json=ask(project), headers=bearer(tokens.user))
        sid = UUID((await response.get_json())["snapshot_id"])
        path = f"/v1/renders/{sid}/cancel"

        assert (await api.post(path, headers=bearer(tokens.user))).status_code == 404
        cancelled = await api.post(path, headers=bearer(tokens.admin))

        assert cancelled.status_code == 200
        assert await cancelled.get_json() == {"cancelled": True, "refund_amount_minor": 150}
        assert await ledger.balance(db, tokens.user_id) == 1000
        got = await (await api.get(f"/v1/snapshots/{sid}", headers=bearer(tokens.user))).get_json()
        assert got["status"] == "Failed"
        again = await api.post(path, headers=bearer(tokens.service))  # idempotent
        assert await again.get_json() == {"cancelled": True, "refund_amount_minor": 150}
        assert (
            await api.get(f"/v1/renders/{sid}", headers=bearer(tokens.admin))
        ).status_code == 404


async def test_cached_image_is_the_validated_attempt_and_a_fenced_late_upload_cannot_replace_it(
    config: Config, db: Database, actor_system: ActorSystem, tokens: Tokens, tmp_path: Path
) -> None:
    """Attempt 1 was superseded (its node was declared lost) and attempt 2 was rendered: the
    snapshot caches attempt 2's own key, attempt 1's object goes, and attempt 1's node
    uploading late writes only to its own key, never over the cached image."""
    store = MinioStore(config.s3)
    app = create_app(AppState(config, db, store))  # no actors: the job waits, Queued
    project = await make_project(db, tokens.user_id)
    async with app.test_app() as test_app:
        api = test_app.test_client()
        response = await api.post("/v1/snapshots", json=ask(project), headers=bearer(tokens.user))
        sid = UUID((await response.get_json())["snapshot_id"])
    loaded = await job_state.load(db, sid)
    assert loaded is not None
    row, queued = loaded
    lost, holder = await add_node(db), await add_node(db)
    first = js.RangeState(uuid4(), 40, 40, js.RangeStatus.FAILED, lost, 1)
    second = js.RangeState(uuid4(), 40, 40, js.RangeStatus.RENDERED, holder, 2, frozenset({40}))
    rendering = attrs.evolve(queued, step=js.JobStep.RENDERING, ranges=(first, second))
    async with db.transaction() as conn:
        revision = await job_state.save(conn, row.revision, queued, rendering, "png", NOW)
    first_key = job_state.output_key(sid, first.id, "png")
    second_key = job_state.output_key(sid, second.id, "png")
    assert first_key != second_key
    still = tmp_path / "still.png"
    media.render_still(still, frame_number=40, width=64, height=36)
    await store.put_bytes(first_key, b"attempt 1, superseded", "image/png")
    await store.put_file(second_key, still, "image/png")
    check = await check_still(store, second_key, snapshot_db.thumbnail_key(sid))
    assert check.ok
    effects = JobEffects(
        actor_system.jobs.deps, attrs.evolve(row, revision=revision), rendering, Mock()
    )

    decision = js.decide(
        rendering,
        js.OutputValidated(second.id, True, None, check.width, check.height),
        js.JobPolicy(max_attempts=3),
    )
    await effects._commit(decision)

    found = await snapshot_db.get(db, sid)
    assert found is not None
    cached = found[0]
    assert (cached.status, cached.image_key) == ("Cached", second_key)
    assert cached.thumbnail_key == snapshot_db.thumbnail_key(sid)
    assert await store.stat(first_key) is None  # the superseded attempt is gone
    await store.put_bytes(first_key, b"attempt 1, uploaded late", "image/png")
    assert await store.get_bytes(cached.image_key) == still.read_bytes()
