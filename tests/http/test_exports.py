"""Exports over HTTP against real PostgreSQL and S3: list, detail, delete, extend, download urls."""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from uuid import UUID, uuid4

import attrs
import httpx
import pytest
import trio

from flatrender.actors.reaper import Reaper
from flatrender.actors.retention import retention_tasks
from flatrender.config import Config, PricingConfig
from flatrender.embedded import EmbeddedS3
from flatrender.http.app import create_app
from flatrender.http.common import AppState
from flatrender.persistence import exports, ledger
from flatrender.persistence.db import Database
from flatrender.storage import MinioStore, ObjectStore, StorageError
from tests.helpers import Tokens, bearer

PER_DAY = 5  # minor units per day of extension, pinned so the charges read as arithmetic
VIDEO = b"\x00\x00\x00\x18ftypmp42-not-really-a-video-" + bytes(range(256)) * 4
THUMBNAIL = b"\x89PNG\r\n\x1a\n-thumbnail-bytes"


@pytest.fixture
async def app_state(config: Config, db: Database) -> AppState:
    """No actor system: nothing but the request touches the exports (no Reaper round)."""
    pricing = PricingConfig(export_extend_per_day_minor=PER_DAY)
    return AppState(
        config=attrs.evolve(config, pricing=pricing), db=db, store=MinioStore(config.s3)
    )


@pytest.fixture
async def api(app_state: AppState) -> AsyncIterator[Any]:
    app = create_app(app_state)
    async with app.test_app() as test_app:
        yield test_app.test_client()


def unreachable_store(config: Config) -> MinioStore:
    """A store whose server is down: a port nothing listens on (connection refused)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return MinioStore(attrs.evolve(config.s3, endpoint=f"127.0.0.1:{port}"))


async def make_export(
    db: Database,
    store: ObjectStore,
    owner: UUID,
    *,
    produced: datetime | None = None,
    keep: timedelta = timedelta(days=30),
    extra_formats: tuple[str, ...] = (),
) -> exports.ExportRow:
    """An export the way the Merger leaves one: objects under exports/{id}/, rows naming them."""
    export_id = uuid4()
    produced = produced or datetime.now(UTC).replace(microsecond=0)
    video, thumb = f"exports/{export_id}/video.mp4", f"exports/{export_id}/thumbnail.png"
    await store.put_bytes(video, VIDEO, "video/mp4")
    await store.put_bytes(thumb, THUMBNAIL, "image/png")
    row = exports.ExportRow(
        id=export_id,
        user_id=owner,
        job_id=None,
        saved_project_id=uuid4(),
        path=video,
        image=thumb,
        size_bytes=len(VIDEO),
        duration_sec=2.0,
        width=64,
        height=36,
        file_extension="mp4",
        file_type="video/mp4",
        render_quality="Medium",
        create_type="Cash",
        produce_date=produced,
        auto_delete_date=produced + keep,
    )
    files = [
        exports.ExportFile(uuid4(), export_id, video, thumb, len(VIDEO), "mp4"),
        exports.ExportFile(uuid4(), export_id, thumb, thumb, len(THUMBNAIL), "png"),
    ]
    for fmt in extra_formats:
        key = f"exports/{export_id}/video.{fmt}"
        await store.put_bytes(key, fmt.encode() * 10)
        files.append(exports.ExportFile(uuid4(), export_id, key, thumb, 20, fmt))
    await exports.insert(db, [row], files)
    return row


async def http_get(url: str) -> httpx.Response:
    return await trio.to_thread.run_sync(lambda: httpx.get(url, timeout=10))


async def error_of(response: Any, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, await response.get_data(as_text=True)
    error: dict[str, Any] = (await response.get_json())["error"]
    assert error["code"] == code and error["message"]
    return error


async def extend(api: Any, token: str, export_id: UUID, days: Any) -> Any:
    return await api.post(
        f"/v1/exports/{export_id}/extend", json={"days": days}, headers=bearer(token)
    )


async def extension_entries(db: Database, user_id: UUID) -> list[tuple[int, UUID]]:
    records = await db.fetch(
        "SELECT amount_minor, export_id FROM ledger_entries "
        "WHERE user_id = $1 AND kind = 'extension' ORDER BY id",
        user_id,
    )
    return [(r["amount_minor"], r["export_id"]) for r in records]


ROUTES = (
    ("GET", "/v1/exports"),
    ("GET", "/v1/exports/{}"),
    ("DELETE", "/v1/exports/{}"),
    ("POST", "/v1/exports/{}/extend"),
    ("GET", "/v1/exports/{}/download-url"),
)


# ------------------------------------------------------------------ auth, visibility


@pytest.mark.parametrize(("method", "path"), ROUTES)
async def test_every_route_needs_a_token(api: Any, method: str, path: str) -> None:
    response = await api.open(path.format(uuid4()), method=method, json={"days": 1})
    await error_of(response, 401, "unauthorized")


@pytest.mark.parametrize(("method", "path"), ROUTES[1:])
async def test_someone_elses_export_is_404_and_untouched(
    api: Any, app_state: AppState, db: Database, tokens: Tokens, method: str, path: str
) -> None:
    row = await make_export(db, app_state.store, tokens.user_id)
    await ledger.credit(db, tokens.other_user_id, 1000)
    response = await api.open(
        path.format(row.id), method=method, json={"days": 1}, headers=bearer(tokens.other_user)
    )
    error = await error_of(response, 404, "not_found")
    assert error["details"]["id"] == str(row.id)
    assert await exports.get(db, row.id) == row
    assert await app_state.store.stat(row.path) is not None
    assert await extension_entries(db, tokens.other_user_id) == []


@pytest.mark.parametrize(("method", "path"), ROUTES[1:])
async def test_unknown_export_is_404_and_a_bad_id_422(
    api: Any, tokens: Tokens, method: str, path: str
) -> None:
    response = await api.open(
        path.format(uuid4()), method=method, json={"days": 1}, headers=bearer(tokens.user)
    )
    await error_of(response, 404, "not_found")
    response = await api.open(
        path.format("nope"), method=method, json={"days": 1}, headers=bearer(tokens.user)
    )
    error = await error_of(response, 422, "validation_failed")
    assert error["details"]["errors"][0]["field"] == "export_id"


# ------------------------------------------------------------------ list and detail


async def test_list_shows_own_exports_newest_first_with_paging(
    api: Any, app_state: AppState, db: Database, tokens: Tokens
) -> None:
    base = datetime(2030, 1, 1, tzinfo=UTC)
    mine = [
        await make_export(db, app_state.store, tokens.user_id, produced=base + timedelta(hours=h))
        for h in (1, 3, 2)
    ]
    await make_export(db, app_state.store, tokens.other_user_id, produced=base)
    newest_first = [str(r.id) for r in sorted(mine, key=lambda r: r.produce_date, reverse=True)]

    first = await api.get("/v1/exports?page_size=2", headers=bearer(tokens.user))
    assert first.status_code == 200
    page1 = await first.get_json()
    assert [e["id"] for e in page1["data"]] == newest_first[:2]
    assert page1["meta"] == {"page": 1, "page_size": 2, "total": 3, "has_more": True}
    second = await (
        await api.get("/v1/exports?page=2&page_size=2", headers=bearer(tokens.user))
    ).get_json()
    assert [e["id"] for e in second["data"]] == newest_first[2:]
    assert second["meta"]["has_more"] is False
    item = page1["data"][0]
    assert set(item) == {
        "id", "saved_project_id", "path", "image", "size_bytes", "duration_sec", "width",
        "height", "file_extension", "file_type", "render_quality", "create_type",
        "produce_date", "auto_delete_date",
    }  # fmt: skip
    assert item["produce_date"] == "2030-01-01T03:00:00Z"

    empty = await (await api.get("/v1/exports?page=9", headers=bearer(tokens.user))).get_json()
    assert empty == {
        "data": [],
        "meta": {"page": 9, "page_size": 20, "total": 3, "has_more": False},
    }
    bad = await api.get("/v1/exports?page=x", headers=bearer(tokens.user))
    await error_of(bad, 422, "validation_failed")
    last = await api.get("/v1/exports?page=1000000&page_size=100", headers=bearer(tokens.user))
    assert (await last.get_json())["data"] == []
    for page in ("1000001", "1000000000000000000"):  # an OFFSET past bigint was a 500
        huge = await api.get(f"/v1/exports?page={page}&page_size=100", headers=bearer(tokens.user))
        error = await error_of(huge, 422, "validation_failed")
        assert [e["field"] for e in error["details"]["errors"]] == ["page"]


async def test_a_service_cannot_list_and_an_admin_lists_only_their_own(
    api: Any, app_state: AppState, db: Database, tokens: Tokens
) -> None:
    await make_export(db, app_state.store, tokens.user_id)
    service = await api.get("/v1/exports", headers=bearer(tokens.service))
    await error_of(service, 403, "forbidden")
    admin = await (await api.get("/v1/exports", headers=bearer(tokens.admin))).get_json()
    assert admin["data"] == [] and admin["meta"]["total"] == 0


async def test_detail_lists_every_file_for_owner_and_admin(
    api: Any, app_state: AppState, db: Database, tokens: Tokens
) -> None:
    row = await make_export(db, app_state.store, tokens.user_id, extra_formats=("webm",))
    for token in (tokens.user, tokens.admin, tokens.service):
        response = await api.get(f"/v1/exports/{row.id}", headers=bearer(token))
        assert response.status_code == 200
        detail = await response.get_json()
        assert detail["id"] == str(row.id)
        assert (detail["path"], detail["image"]) == (row.path, row.image)
        assert detail["size_bytes"] == len(VIDEO)
        files = {f["file_type"]: f for f in detail["files"]}
        assert sorted(files) == ["mp4", "png", "webm"]
        assert files["mp4"]["path"] == row.path and files["mp4"]["thumbnail"] == row.image
        assert files["png"]["size_bytes"] == len(THUMBNAIL)
        assert set(files["mp4"]) == {"id", "thumbnail", "path", "size_bytes", "file_type"}


# ------------------------------------------------------------------ download urls and delete


async def test_download_url_gets_the_exact_bytes_until_the_export_is_deleted(
    api: Any, app_state: AppState, db: Database, tokens: Tokens
) -> None:
    row = await make_export(db, app_state.store, tokens.user_id)
    before = datetime.now(UTC)
    response = await api.get(f"/v1/exports/{row.id}/download-url", headers=bearer(tokens.user))
    assert response.status_code == 200
    answer = await response.get_json()
    ttl = app_state.config.exports.download_url_ttl_sec
    expires = datetime.fromisoformat(answer["expires_at"].replace("Z", "+00:00"))
    assert before + timedelta(seconds=ttl - 5) <= expires <= before + timedelta(seconds=ttl + 5)
    assert f"X-Amz-Expires={ttl}" in answer["url"]
    assert (await http_get(answer["url"])).content == VIDEO
    png = await (
        await api.get(f"/v1/exports/{row.id}/download-url?format=PNG", headers=bearer(tokens.user))
    ).get_json()
    assert (await http_get(png["url"])).content == THUMBNAIL

    deleted = await api.delete(f"/v1/exports/{row.id}", headers=bearer(tokens.user))
    assert deleted.status_code == 204
    assert (await http_get(answer["url"])).status_code in (403, 404)
    assert (await http_get(png["url"])).status_code in (403, 404)
    assert await exports.get(db, row.id) is None
    assert await exports.files_of(db, [row.id]) == []
    assert await app_state.store.list_prefix(f"exports/{row.id}/") == []
    again = await api.delete(f"/v1/exports/{row.id}", headers=bearer(tokens.user))
    await error_of(again, 404, "not_found")
    gone = await api.get(f"/v1/exports/{row.id}/download-url", headers=bearer(tokens.user))
    await error_of(gone, 404, "not_found")


async def test_download_url_for_a_missing_format_is_404_and_a_bad_one_422(
    api: Any, app_state: AppState, db: Database, tokens: Tokens
) -> None:
    row = await make_export(db, app_state.store, tokens.user_id)
    url = f"/v1/exports/{row.id}/download-url"
    missing = await api.get(url + "?format=webm", headers=bearer(tokens.user))
    error = await error_of(missing, 404, "format_not_found")
    assert error["details"] == {"id": str(row.id), "format": "webm", "available": ["mp4", "png"]}
    bad = await api.get(url + "?format=../x", headers=bearer(tokens.user))
    error = await error_of(bad, 422, "validation_failed")
    assert error["details"]["errors"][0]["field"] == "format"


async def test_admin_deletes_anyones_export(
    api: Any, app_state: AppState, db: Database, tokens: Tokens
) -> None:
    row = await make_export(db, app_state.store, tokens.user_id)
    response = await api.delete(f"/v1/exports/{row.id}", headers=bearer(tokens.admin))
    assert response.status_code == 204
    assert await exports.get(db, row.id) is None
    assert await app_state.store.stat(row.path) is None


async def test_delete_while_storage_is_down_is_503_and_loses_nothing(
    api: Any, app_state: AppState, db: Database, tokens: Tokens
) -> None:
    row = await make_export(db, app_state.store, tokens.user_id)
    real = app_state.store
    app_state.store = unreachable_store(app_state.config)
    try:
        response = await api.delete(f"/v1/exports/{row.id}", headers=bearer(tokens.user))
        await error_of(response, 503, "storage_unavailable")
    finally:
        app_state.store = real
    assert await exports.get(db, row.id) == row
    assert len(await exports.files_of(db, [row.id])) == 2
    assert await real.get_bytes(row.path) == VIDEO

    # Storage back: the same request now deletes everything.
    response = await api.delete(f"/v1/exports/{row.id}", headers=bearer(tokens.user))
    assert response.status_code == 204
    assert await exports.get(db, row.id) is None
    assert await real.list_prefix(f"exports/{row.id}/") == []


@attrs.define
class RefusingStore:
    """The real store, but deletes are refused as S3 does with 403 AccessDenied."""

    inner: MinioStore

    async def delete(self, key: str) -> None:
        raise StorageError(f"S3 operation failed; code: AccessDenied, key: {key}")

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


async def test_delete_storage_refuses_is_502_in_the_error_format_and_loses_nothing(
    api: Any, app_state: AppState, db: Database, tokens: Tokens
) -> None:
    row = await make_export(db, app_state.store, tokens.user_id)
    real = app_state.store
    app_state.store = RefusingStore(real)  # type: ignore[assignment]
    try:
        response = await api.delete(f"/v1/exports/{row.id}", headers=bearer(tokens.user))
        error = await error_of(response, 502, "storage_error")
        assert error["details"] == {}
        assert "AccessDenied" not in error["message"]  # the server's words stay in the log
    finally:
        app_state.store = real
    assert await exports.get(db, row.id) == row
    assert len(await exports.files_of(db, [row.id])) == 2
    assert await real.get_bytes(row.path) == VIDEO


# ------------------------------------------------------------------ extend


async def test_extend_charges_once_per_call_and_moves_the_date(
    api: Any, app_state: AppState, db: Database, tokens: Tokens
) -> None:
    row = await make_export(db, app_state.store, tokens.user_id)
    await ledger.credit(db, tokens.user_id, 1000)

    first = await extend(api, tokens.user, row.id, 10)
    assert first.status_code == 200
    moved = row.auto_delete_date + timedelta(days=10)
    assert await first.get_json() == {
        "new_auto_delete_date": moved.isoformat().replace("+00:00", "Z")
    }
    second = await extend(api, tokens.user, row.id, 1)
    assert second.status_code == 200

    stored = await exports.get(db, row.id)
    assert stored is not None
    assert stored.auto_delete_date == row.auto_delete_date + timedelta(days=11)
    assert await extension_entries(db, tokens.user_id) == [
        (-10 * PER_DAY, row.id),
        (-PER_DAY, row.id),
    ]
    assert await ledger.balance(db, tokens.user_id) == 1000 - 11 * PER_DAY


async def test_admin_extension_is_charged_to_the_owner(
    api: Any, app_state: AppState, db: Database, tokens: Tokens
) -> None:
    row = await make_export(db, app_state.store, tokens.user_id)
    await ledger.credit(db, tokens.user_id, 100)
    assert (await extend(api, tokens.admin, row.id, 5)).status_code == 200
    assert await extension_entries(db, tokens.user_id) == [(-5 * PER_DAY, row.id)]


@pytest.mark.parametrize("days", [0, 366, -1, "5", 2.5, None, True])
async def test_extend_refuses_bad_days_with_422_naming_the_field(
    api: Any, app_state: AppState, db: Database, tokens: Tokens, days: Any
) -> None:
    row = await make_export(db, app_state.store, tokens.user_id)
    await ledger.credit(db, tokens.user_id, 10_000)
    error = await error_of(await extend(api, tokens.user, row.id, days), 422, "validation_failed")
    assert [e["field"] for e in error["details"]["errors"]] == ["$.days"]
    assert await exports.get(db, row.id) == row
    assert await extension_entries(db, tokens.user_id) == []


async def test_extend_without_days_or_body_is_refused(
    api: Any, app_state: AppState, db: Database, tokens: Tokens
) -> None:
    row = await make_export(db, app_state.store, tokens.user_id)
    url = f"/v1/exports/{row.id}/extend"
    error = await error_of(
        await api.post(url, json={}, headers=bearer(tokens.user)), 422, "validation_failed"
    )
    assert error["details"]["errors"][0]["field"] == "$.days"
    raw = await api.post(url, data=b"{", headers={**bearer(tokens.user), "Content-Type": "x"})
    await error_of(raw, 400, "malformed_json")


async def test_extend_beyond_the_balance_is_402_and_writes_nothing(
    api: Any, app_state: AppState, db: Database, tokens: Tokens
) -> None:
    row = await make_export(db, app_state.store, tokens.user_id)
    await ledger.credit(db, tokens.user_id, 3 * PER_DAY - 1)
    error = await error_of(await extend(api, tokens.user, row.id, 3), 402, "insufficient_balance")
    assert error["details"] == {"balance_minor": 3 * PER_DAY - 1, "price_minor": 3 * PER_DAY}
    assert await exports.get(db, row.id) == row
    assert await extension_entries(db, tokens.user_id) == []


async def test_extend_of_an_export_already_due_is_409(
    api: Any, app_state: AppState, db: Database, tokens: Tokens
) -> None:
    produced = datetime.now(UTC) - timedelta(days=31)
    row = await make_export(db, app_state.store, tokens.user_id, produced=produced)
    await ledger.credit(db, tokens.user_id, 1000)
    await error_of(await extend(api, tokens.user, row.id, 5), 409, "export_expired")
    assert await extension_entries(db, tokens.user_id) == []


async def test_a_negative_configured_price_per_day_is_taken_as_zero(
    api: Any, app_state: AppState, db: Database, tokens: Tokens
) -> None:
    """The price comes from domain.pricing, which clamps: free, never a credit."""
    app_state.config = attrs.evolve(
        app_state.config, pricing=PricingConfig(export_extend_per_day_minor=-PER_DAY)
    )
    row = await make_export(db, app_state.store, tokens.user_id)
    assert (await extend(api, tokens.user, row.id, 5)).status_code == 200
    assert await extension_entries(db, tokens.user_id) == []
    assert await ledger.balance(db, tokens.user_id) == 0


async def test_concurrent_extensions_serialise_on_the_account(
    api: Any, app_state: AppState, db: Database, tokens: Tokens
) -> None:
    """Money for exactly two of three: two are charged, one is refused, none overdraws."""
    row = await make_export(db, app_state.store, tokens.user_id)
    await ledger.credit(db, tokens.user_id, 2 * 4 * PER_DAY)
    statuses: list[int] = []

    async def one() -> None:
        statuses.append((await extend(api, tokens.user, row.id, 4)).status_code)

    async with trio.open_nursery() as nursery:
        for _ in range(3):
            nursery.start_soon(one)
    assert sorted(statuses) == [200, 200, 402]
    assert await ledger.balance(db, tokens.user_id) == 0
    stored = await exports.get(db, row.id)
    assert stored is not None
    assert stored.auto_delete_date == row.auto_delete_date + timedelta(days=8)


# ------------------------------------------------------------------ a real S3 outage


@pytest.fixture
def own_s3(tmp_path: Path) -> Iterator[EmbeddedS3]:
    """An S3 server of this test's own, so stopping it disturbs no other test."""
    with EmbeddedS3(tmp_path / "s3", bucket="outage-test") as server:
        yield server


@pytest.mark.slow
async def test_s3_stopped_mid_test_gives_503_and_nothing_is_lost_once_it_is_back(
    config: Config, db: Database, tokens: Tokens, own_s3: EmbeddedS3
) -> None:
    cfg = attrs.evolve(config, s3=own_s3.s3_config())
    state = AppState(config=cfg, db=db, store=MinioStore(cfg.s3))
    kept = await make_export(db, state.store, tokens.user_id)
    due = await make_export(db, state.store, tokens.user_id, keep=timedelta(seconds=-1))
    reaper = Reaper(retention_tasks(db, state.store, lambda: cfg))
    app = create_app(state)
    async with app.test_app() as test_app:
        api = test_app.test_client()
        await trio.to_thread.run_sync(own_s3.stop)
        try:
            response = await api.delete(f"/v1/exports/{kept.id}", headers=bearer(tokens.user))
            await error_of(response, 503, "storage_unavailable")
            assert (await reaper.run_once()).get("exports_expired", 0) == 0
            # Urls are signed locally: still answered while storage is down.
            url = await api.get(f"/v1/exports/{kept.id}/download-url", headers=bearer(tokens.user))
            assert url.status_code == 200
        finally:
            await trio.to_thread.run_sync(own_s3.start)
        assert own_s3.s3_config().endpoint == cfg.s3.endpoint, "restarted on other ports"
        for row in (kept, due):
            assert await exports.get(db, row.id) == row
            assert await state.store.get_bytes(row.path) == VIDEO
        assert (await http_get((await url.get_json())["url"])).content == VIDEO

        assert (await reaper.run_once())["exports_expired"] == 1
        response = await api.delete(f"/v1/exports/{kept.id}", headers=bearer(tokens.user))
        assert response.status_code == 204
    for row in (kept, due):
        assert await exports.get(db, row.id) is None
        assert await state.store.list_prefix(f"exports/{row.id}/") == []
