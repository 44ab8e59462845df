"""Snapshots over HTTP (real PostgreSQL and S3): cache hits without the job system, one render
per key under concurrency, the job a miss creates, and every refusal."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID, uuid4

import attrs
import httpx
import pytest
import trio

from flatrender import media
from flatrender.config import Config
from flatrender.domain.catalog import ProjectSpec, Scene
from flatrender.http.app import create_app
from flatrender.http.common import AppState
from flatrender.persistence import catalog, jobs, ledger
from flatrender.persistence import snapshots as snapshot_db
from flatrender.persistence.db import Database, open_database
from flatrender.storage import MinioStore
from tests.helpers import Tokens, bearer
from tests.http.test_exports import unreachable_store

SCENES = [Scene("intro", 0, 29), Scene("main", 30, 89)]


def image_of(snapshot_id: UUID) -> str:
    """A seeded snapshot's image key: the output of its one attempt (here named by its id)."""
    return snapshot_db.attempt_key(snapshot_id, snapshot_id)


@pytest.fixture
async def api(config: Config, db: Database) -> AsyncIterator[Any]:
    """The app without actors: a miss creates a job that stays Queued; no node anywhere."""
    app = create_app(AppState(config=config, db=db, store=MinioStore(config.s3)))
    async with app.test_app() as test_app:
        yield test_app.test_client()


async def make_project(db: Database, owner: UUID, template_md5: str = "b" * 32) -> UUID:
    project_id = uuid4()
    await catalog.upsert(db, project_id, spec(owner, template_md5))
    return project_id


def spec(owner: UUID, template_md5: str = "b" * 32) -> ProjectSpec:
    return ProjectSpec(
        owner_user_id=owner,
        name="Promo",
        template_md5=template_md5,
        template_url="demo://promo",
        ae_version="2024",
        frame_rate=30,
        total_frames=90,
        duration_sec=3.0,
        scenes=SCENES,
    )


def ask(project_id: UUID, scene: str = "main", frame: Any = 40) -> dict[str, Any]:
    return {"saved_project_id": str(project_id), "scene_key": scene, "frame_number": frame}


async def post(api: Any, token: str, body: Any) -> tuple[int, Any]:
    response = await api.post("/v1/snapshots", json=body, headers=bearer(token))
    return response.status_code, await response.get_json()


async def snapshot_jobs(db: Database) -> list[Any]:
    return list(await db.fetch("SELECT * FROM render_jobs WHERE kind = 'Snapshot'"))


async def seed_cached(
    db: Database,
    store: MinioStore,
    owner: UUID,
    project_id: UUID,
    tmp_path: Any,
    *,
    frame: int = 40,
    expires_in: timedelta = timedelta(hours=1),
) -> UUID:
    """A Cached snapshot as a finished render leaves it: both objects stored, no live job."""
    sid = uuid4()
    still = tmp_path / f"{sid}.png"
    media.render_still(still, frame_number=frame, width=64, height=36)
    await store.put_file(image_of(sid), still, "image/png")
    await store.put_bytes(snapshot_db.thumbnail_key(sid), media.thumbnail_png(still), "image/png")
    now = datetime.now(UTC)
    await db.execute(
        "INSERT INTO snapshots (id, user_id, saved_project_id, project_version, scene_key, "
        "frame_number, status, image_key, thumbnail_key, width, height, duration_ms, "
        "requested_at, completed_at, expires_at) "
        "VALUES ($1, $2, $3, 1, 'main', $4, 'Cached', $5, $6, 64, 36, 1500, $7, $7, $8)",
        sid,
        owner,
        project_id,
        frame,
        image_of(sid),
        snapshot_db.thumbnail_key(sid),
        now - timedelta(seconds=2),
        now + expires_in,
    )
    return sid


# ------------------------------------------------------------------ cache hits


async def test_cached_snapshot_is_answered_with_urls_and_no_job(
    api: Any, db: Database, config: Config, tokens: Tokens, tmp_path: Any
) -> None:
    store = MinioStore(config.s3)
    project = await make_project(db, tokens.user_id)
    sid = await seed_cached(db, store, tokens.user_id, project, tmp_path)

    status, body = await post(api, tokens.user, ask(project))

    assert status == 202, body
    assert (body["snapshot_id"], body["status"]) == (str(sid), "Cached")
    assert body["expires_at"].endswith("Z")
    async with httpx.AsyncClient() as http:
        image = await http.get(body["image_url"])
        thumbnail = await http.get(body["thumbnail_url"])
    assert image.status_code == 200 and image.content == await store.get_bytes(image_of(sid))
    assert thumbnail.status_code == 200 and thumbnail.content.startswith(b"\x89PNG")
    assert await snapshot_jobs(db) == []  # answered without the job system

    got = await api.get(f"/v1/snapshots/{sid}", headers=bearer(tokens.user))
    detail = await got.get_json()
    assert got.status_code == 200
    assert (detail["status"], detail["width"], detail["height"]) == ("Cached", 64, 36)
    assert (detail["scene_key"], detail["frame_number"], detail["duration_ms"]) == (
        "main",
        40,
        1500,
    )
    assert detail["image_url"] and detail["thumbnail_url"] and detail["completed_at"]


async def test_expired_cached_snapshot_is_rendered_again_and_its_objects_removed(
    api: Any, db: Database, config: Config, tokens: Tokens, tmp_path: Any
) -> None:
    store = MinioStore(config.s3)
    project = await make_project(db, tokens.user_id)
    old = await seed_cached(
        db, store, tokens.user_id, project, tmp_path, expires_in=timedelta(seconds=-1)
    )

    status, body = await post(api, tokens.user, ask(project))

    assert status == 202, body
    assert body["status"] == "Pending" and body["snapshot_id"] != str(old)
    assert body["image_url"] is None and body["thumbnail_url"] is None
    assert await store.stat(image_of(old)) is None
    assert await store.stat(snapshot_db.thumbnail_key(old)) is None
    assert await db.fetchval("SELECT count(*) FROM snapshots WHERE id = $1", old) == 0


async def test_a_new_project_version_misses_the_cache(
    api: Any, db: Database, config: Config, tokens: Tokens, tmp_path: Any
) -> None:
    store = MinioStore(config.s3)
    project = await make_project(db, tokens.user_id)
    old = await seed_cached(db, store, tokens.user_id, project, tmp_path)
    await catalog.upsert(db, project, spec(tokens.user_id, template_md5="c" * 32))  # version 2

    status, body = await post(api, tokens.user, ask(project))

    assert status == 202 and body["status"] == "Pending" and body["snapshot_id"] != str(old)
    [job] = await snapshot_jobs(db)
    assert job["project_version"] == 2


# ------------------------------------------------------------------ misses


async def test_uncached_snapshot_creates_one_single_frame_png_job(
    api: Any, db: Database, tokens: Tokens
) -> None:
    project = await make_project(db, tokens.user_id)

    status, body = await post(api, tokens.user, ask(project, "main", 42))

    assert status == 202, body
    assert body["status"] == "Pending" and body["image_url"] is None
    sid = UUID(body["snapshot_id"])
    row = await jobs.get_job(db, sid)  # the job has the snapshot's id
    assert row is not None
    assert (row.kind, row.price_type, row.priority_queue) == ("Snapshot", "Snapshot", "Snapshot")
    assert (row.start_frame, row.end_frame, row.output_format) == (42, 42, "png")
    assert (row.step, row.paid_price_minor) == ("Queued", 0)
    found = await snapshot_db.get(db, sid)
    assert found is not None and found[0].job_id == sid
    assert await ledger.balance(db, tokens.user_id) == 0  # free by default: no entry at all

    again_status, again = await post(api, tokens.user, ask(project, "main", 42))
    assert (again_status, again["snapshot_id"]) == (202, str(sid))
    assert len(await snapshot_jobs(db)) == 1

    got = await (await api.get(f"/v1/snapshots/{sid}", headers=bearer(tokens.user))).get_json()
    assert (got["status"], got["image_url"], got["width"], got["completed_at"]) == (
        "Pending",
        None,
        None,
        None,
    )
    # A snapshot job is not a render: /v1/renders does not show it.
    assert (await api.get(f"/v1/renders/{sid}", headers=bearer(tokens.user))).status_code == 404


async def test_two_concurrent_identical_requests_share_one_render(
    api: Any, db: Database, tokens: Tokens
) -> None:
    project = await make_project(db, tokens.user_id)
    answers: list[tuple[int, Any]] = []

    async def one() -> None:
        answers.append(await post(api, tokens.user, ask(project)))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(one)
        nursery.start_soon(one)

    assert [status for status, _ in answers] == [202, 202]
    assert answers[0][1]["snapshot_id"] == answers[1][1]["snapshot_id"]
    assert len(await snapshot_jobs(db)) == 1
    assert await db.fetchval("SELECT count(*) FROM snapshots") == 1


async def test_racing_inserts_of_one_key_wait_and_share_the_winner(
    db: Database, tokens: Tokens
) -> None:
    """The ON CONFLICT path itself, without the account lock serialising the two."""
    project = await make_project(db, tokens.user_id)
    now = datetime.now(UTC)

    def new(user: UUID) -> snapshot_db.NewSnapshot:
        return snapshot_db.NewSnapshot(
            uuid4(), user, project, 1, "main", 40, now, now + timedelta(hours=1)
        )

    results: list[tuple[snapshot_db.SnapshotRow, bool]] = []
    first_inserted = trio.Event()

    async def winner() -> None:
        async with db.transaction() as conn:
            results.append(await snapshot_db.insert(conn, new(tokens.user_id)))
            first_inserted.set()
            await trio.sleep(0.3)  # the loser waits on the index entry meanwhile

    async def loser() -> None:
        await first_inserted.wait()
        async with db.transaction() as conn:
            results.append(await snapshot_db.insert(conn, new(tokens.other_user_id)))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(winner)
        nursery.start_soon(loser)

    (won, created), (shared, second_created) = results
    assert created and not second_created and shared.id == won.id


async def test_priced_snapshot_is_charged_or_refused_with_402(
    config: Config, db: Database, tokens: Tokens
) -> None:
    pricing = attrs.evolve(
        config.pricing, price_type_factor={**config.pricing.price_type_factor, "Snapshot": 300.0}
    )
    app = create_app(
        AppState(config=attrs.evolve(config, pricing=pricing), db=db, store=MinioStore(config.s3))
    )
    project = await make_project(db, tokens.user_id)
    async with app.test_app() as test_app:
        api = test_app.test_client()
        status, body = await post(api, tokens.user, ask(project))
        assert status == 402 and body["error"]["code"] == "insufficient_balance"
        assert body["error"]["details"] == {"balance_minor": 0, "price_minor": 150}
        assert await db.fetchval("SELECT count(*) FROM snapshots") == 0
        assert await snapshot_jobs(db) == []

        await ledger.credit(db, tokens.user_id, 1000)
        status, body = await post(api, tokens.user, ask(project))
        assert status == 202, body
    assert await ledger.balance(db, tokens.user_id) == 850
    [job] = await snapshot_jobs(db)
    assert job["paid_price_minor"] == 150


# ------------------------------------------------------------------ refusals


async def test_requests_without_a_valid_token_are_401(api: Any, db: Database) -> None:
    project = await make_project(db, uuid4())
    assert (await api.post("/v1/snapshots", json=ask(project))).status_code == 401
    bad = {"Authorization": "Bearer nope"}
    assert (await api.post("/v1/snapshots", json=ask(project), headers=bad)).status_code == 401
    assert (await api.get(f"/v1/snapshots/{uuid4()}")).status_code == 401


async def test_unknown_or_foreign_project_is_404(api: Any, db: Database, tokens: Tokens) -> None:
    foreign = await make_project(db, tokens.other_user_id)
    for project in (uuid4(), foreign):
        status, body = await post(api, tokens.user, ask(project))
        assert status == 404 and body["error"]["code"] == "not_found"
    assert await snapshot_jobs(db) == []


async def test_service_token_cannot_request_a_snapshot(
    api: Any, db: Database, tokens: Tokens
) -> None:
    project = await make_project(db, tokens.user_id)
    status, _ = await post(api, tokens.service, ask(project))
    assert status == 403


@pytest.mark.parametrize(
    ("scene", "frame", "field"),
    [
        ("main", 29, "$.frame_number"),  # the last frame of intro, not of main
        ("main", 90, "$.frame_number"),
        ("intro", 30, "$.frame_number"),
        ("outro", 0, "$.scene_key"),
        ("main", -1, "$.frame_number"),
        ("main", 2**31, "$.frame_number"),
        ("", 40, "$.scene_key"),
        ("ma\x00in", 40, "$.scene_key"),
    ],
)
async def test_frame_outside_its_scene_is_422_naming_the_field(
    api: Any, db: Database, tokens: Tokens, scene: str, frame: int, field: str
) -> None:
    project = await make_project(db, tokens.user_id)
    status, body = await post(api, tokens.user, ask(project, scene, frame))
    assert status == 422, body
    assert [e["field"] for e in body["error"]["details"]["errors"]] == [field]
    assert await snapshot_jobs(db) == []


@pytest.mark.parametrize(
    "body",
    [
        {"scene_key": "main", "frame_number": 1},
        {"saved_project_id": "not-a-uuid", "scene_key": "main", "frame_number": 1},
        {"saved_project_id": str(uuid4()), "scene_key": "main", "frame_number": "1"},
        {"saved_project_id": str(uuid4()), "scene_key": 5, "frame_number": 1},
        [],
    ],
)
async def test_bad_body_is_422(api: Any, tokens: Tokens, body: Any) -> None:
    status, answer = await post(api, tokens.user, body)
    assert status == 422, answer
    assert answer["error"]["code"] == "validation_failed"


async def test_non_json_body_is_400(api: Any, tokens: Tokens) -> None:
    response = await api.post("/v1/snapshots", data=b"{nope", headers=bearer(tokens.user))
    assert response.status_code == 400


async def test_get_is_404_for_unknown_or_foreign_and_422_for_a_bad_id(
    api: Any, db: Database, tokens: Tokens
) -> None:
    project = await make_project(db, tokens.user_id)
    _, body = await post(api, tokens.user, ask(project))
    path = f"/v1/snapshots/{body['snapshot_id']}"
    assert (await api.get(path, headers=bearer(tokens.other_user))).status_code == 404
    assert (await api.get(path, headers=bearer(tokens.admin))).status_code == 200
    unknown = await api.get(f"/v1/snapshots/{uuid4()}", headers=bearer(tokens.user))
    assert unknown.status_code == 404
    bad = await api.get("/v1/snapshots/xyz", headers=bearer(tokens.user))
    assert bad.status_code == 422


async def test_get_after_expiry_is_404_snapshot_expired_not_cached_without_urls(
    api: Any, db: Database, config: Config, tokens: Tokens, tmp_path: Any
) -> None:
    store = MinioStore(config.s3)
    project = await make_project(db, tokens.user_id)
    sid = await seed_cached(
        db, store, tokens.user_id, project, tmp_path, expires_in=timedelta(seconds=-1)
    )

    response = await api.get(f"/v1/snapshots/{sid}", headers=bearer(tokens.user))

    assert response.status_code == 404
    error = (await response.get_json())["error"]
    assert error["code"] == "snapshot_expired" and error["message"]
    assert error["details"]["id"] == str(sid) and error["details"]["expires_at"].endswith("Z")
    await db.execute("UPDATE snapshots SET status = 'Failed' WHERE id = $1", sid)
    failed = await api.get(f"/v1/snapshots/{sid}", headers=bearer(tokens.user))
    assert (await failed.get_json())["error"]["code"] == "snapshot_expired"
    # Someone else still learns nothing: plain 404 not_found.
    foreign = await api.get(f"/v1/snapshots/{sid}", headers=bearer(tokens.other_user))
    assert (await foreign.get_json())["error"]["code"] == "not_found"


# ------------------------------------------------------------------ outages


@pytest.fixture
async def closed_db(config: Config, db: Database) -> Database:
    """A database whose pool is closed: every call fails as when PostgreSQL is unreachable.
    (After ``db``: its trio-asyncio loop is the one this pool opens and closes in.)"""
    async with open_database(config.database.url, 1, 1) as down:
        pass
    return down


async def test_database_unavailable_is_503_with_the_error_body_and_writes_nothing(
    config: Config, db: Database, closed_db: Database, tokens: Tokens, tmp_path: Any
) -> None:
    store = MinioStore(config.s3)
    project = await make_project(db, tokens.user_id)
    cached = await seed_cached(db, store, tokens.user_id, project, tmp_path, frame=41)
    app = create_app(AppState(config=config, db=closed_db, store=store))
    async with app.test_app() as test_app:
        api = test_app.test_client()
        for response in (
            await api.post("/v1/snapshots", json=ask(project), headers=bearer(tokens.user)),
            await api.post(
                "/v1/snapshots", json=ask(project, frame=41), headers=bearer(tokens.user)
            ),
            await api.get(f"/v1/snapshots/{cached}", headers=bearer(tokens.user)),
        ):
            assert response.status_code == 503
            error = (await response.get_json())["error"]
            assert error["code"] == "database_unavailable" and error["message"]
    assert [r["id"] for r in await db.fetch("SELECT id FROM snapshots")] == [cached]
    assert await snapshot_jobs(db) == []
    assert await store.stat(image_of(cached)) is not None


async def test_storage_unavailable_is_503_and_keeps_the_expired_snapshot_whole(
    config: Config, db: Database, tokens: Tokens, tmp_path: Any
) -> None:
    """Freeing an expired key deletes its objects first: with S3 down that is a 503 and nothing
    is deleted or created. Urls are signed locally, so fresh answers need no S3 at all."""
    store = MinioStore(config.s3)
    project = await make_project(db, tokens.user_id)
    old = await seed_cached(
        db, store, tokens.user_id, project, tmp_path, expires_in=timedelta(seconds=-1)
    )
    fresh = await seed_cached(db, store, tokens.user_id, project, tmp_path, frame=41)
    state = AppState(config=config, db=db, store=unreachable_store(config))
    app = create_app(state)
    async with app.test_app() as test_app:
        api = test_app.test_client()
        status, body = await post(api, tokens.user, ask(project))
        assert status == 503 and body["error"]["code"] == "storage_unavailable"
        assert body["error"]["message"]
        assert await db.fetchval("SELECT status FROM snapshots WHERE id = $1", old) == "Cached"
        assert await db.fetchval("SELECT count(*) FROM snapshots") == 2
        assert await snapshot_jobs(db) == []
        assert await store.stat(image_of(old)) is not None
        assert await store.stat(snapshot_db.thumbnail_key(old)) is not None

        status, body = await post(api, tokens.user, ask(project, frame=41))
        assert (status, body["snapshot_id"], body["status"]) == (202, str(fresh), "Cached")
        got = await api.get(f"/v1/snapshots/{fresh}", headers=bearer(tokens.user))
        assert got.status_code == 200 and (await got.get_json())["image_url"]

        state.store = store  # storage is back: the same request renders the frame again
        status, body = await post(api, tokens.user, ask(project))
    assert status == 202 and body["status"] == "Pending" and body["snapshot_id"] != str(old)
    assert await db.fetchval("SELECT count(*) FROM snapshots WHERE id = $1", old) == 0
    assert await store.list_prefix(snapshot_db.prefix(old)) == []
