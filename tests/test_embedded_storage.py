"""The embedded servers (pgserver, weed mini) and the minio adapter of the object-storage port."""

from __future__ import annotations

import hashlib
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import trio
import trio_asyncio
import triopg

from flatrender.config import S3Config
from flatrender.embedded import EmbeddedPostgres, EmbeddedS3
from flatrender.storage import (
    MinioStore,
    ObjectInfo,
    ObjectNotFound,
    ObjectStore,
    StorageUnavailable,
)

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedS3]:
    with EmbeddedS3(tmp_path_factory.mktemp("s3"), bucket="storage-test") as server:
        yield server


@pytest.fixture(scope="module")
def pg(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedPostgres]:
    with EmbeddedPostgres(tmp_path_factory.mktemp("pg") / "data", delete_on_stop=True) as server:
        yield server


@pytest.fixture
def store(s3: EmbeddedS3) -> Iterator[MinioStore]:
    minio_store = MinioStore(s3.s3_config())
    yield minio_store
    minio_store.close()


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


def _all_ports(server: EmbeddedS3) -> set[int]:
    return {p for port in server.ports.values() for p in (port, port + 10000)}


async def test_round_trip(store: MinioStore, tmp_path: Path) -> None:
    port: ObjectStore = store  # MinioStore satisfies the port
    data = b"\x00frame bytes\xff" * 1000
    await port.put_bytes("renders/job1/a.mp4", data, "video/mp4")
    await port.put_bytes("renders/job1/b.mp4", b"b", "video/mp4")
    await port.put_bytes("renders/job2/c.mp4", b"c")

    assert await port.get_bytes("renders/job1/a.mp4") == data
    info = await port.stat("renders/job1/a.mp4")
    assert info is not None
    assert (info.key, info.size, info.content_type) == (
        "renders/job1/a.mp4",
        len(data),
        "video/mp4",
    )
    assert info.etag == hashlib.md5(data).hexdigest()  # single-part upload
    assert info.last_modified is not None

    listed = await port.list_prefix("renders/job1/")
    assert [(o.key, o.size) for o in listed] == [
        ("renders/job1/a.mp4", len(data)),
        ("renders/job1/b.mp4", 1),
    ]
    assert all(isinstance(o, ObjectInfo) and o.etag for o in listed)
    assert await port.list_prefix("nothing/here/") == []

    # Files: upload one, download it elsewhere.
    source = tmp_path / "segment.bin"
    source.write_bytes(data * 3)
    await port.put_file("exports/e1/video.mp4", source, "video/mp4")
    target = tmp_path / "out" / "video.mp4"
    await port.download_file("exports/e1/video.mp4", target)
    assert target.read_bytes() == data * 3

    await port.delete("renders/job1/a.mp4")
    assert await port.stat("renders/job1/a.mp4") is None
    with pytest.raises(ObjectNotFound) as caught:
        await port.get_bytes("renders/job1/a.mp4")
    assert caught.value.key == "renders/job1/a.mp4"
    with pytest.raises(ObjectNotFound):
        await port.download_file("renders/job1/a.mp4", tmp_path / "missing.bin")
    await port.delete("renders/job1/a.mp4")  # idempotent
    assert [o.key for o in await port.list_prefix("renders/")] == [
        "renders/job1/b.mp4",
        "renders/job2/c.mp4",
    ]


async def test_stat_of_missing_key_is_none(store: MinioStore) -> None:
    assert await store.stat("snapshots/never/image.png") is None


async def test_presigned_put_then_get(store: MinioStore) -> None:
    key = "renders/job9/segment-0001.mp4"
    body = b"uploaded by a node" * 500
    put_url = await store.presign_put(key, 60)
    get_url = await store.presign_get(key, 60)
    assert put_url.startswith(f"http://{store.endpoint}/storage-test/{key}?")
    assert "X-Amz-Signature=" in put_url and "X-Amz-Expires=60" in put_url

    async with httpx.AsyncClient(timeout=10) as http:
        put = await http.put(put_url, content=body)
        assert put.status_code == 200, put.text
        got = await http.get(get_url)
        assert got.status_code == 200
        assert got.content == body
        info = await store.stat(key)
        assert info is not None and info.size == len(body)

        tampered = get_url.replace("X-Amz-Signature=", "X-Amz-Signature=0")
        assert (await http.get(tampered)).status_code == 403

        await store.delete(key)
        assert (await http.get(get_url)).status_code == 404

    with pytest.raises(ValueError):
        await store.presign_get(key, 0)


async def test_unreachable_storage_raises_unavailable_quickly() -> None:
    cfg = S3Config(endpoint=f"127.0.0.1:{_closed_port()}", access_key="a", secret_key="b" * 8)
    store = MinioStore(cfg)
    started = time.monotonic()
    with trio.fail_after(10):
        with pytest.raises(StorageUnavailable):
            await store.get_bytes("x")
        with pytest.raises(StorageUnavailable):
            await store.stat("x")
        with pytest.raises(StorageUnavailable):
            await store.put_bytes("x", b"1")
        with pytest.raises(StorageUnavailable):
            await store.list_prefix("")
        with pytest.raises(StorageUnavailable):
            await store.ensure_bucket()
    assert time.monotonic() - started < 5
    # Presigning needs no server.
    assert (await store.presign_get("x", 5)).startswith(f"http://{cfg.endpoint}/flatrender/x?")
    store.close()


async def test_ensure_bucket_creates_and_tolerates_existing(s3: EmbeddedS3) -> None:
    store = MinioStore(s3.s3_config(bucket="second-bucket"))
    await store.ensure_bucket()
    await store.ensure_bucket()
    await store.put_bytes("k", b"v")
    assert await store.get_bytes("k") == b"v"
    store.close()


async def test_postgres_answers_and_creates_fresh_databases(pg: EmbeddedPostgres) -> None:
    assert pg.url == f"postgresql://postgres@/postgres?host={pg.socket_dir}"
    tables = "select count(*) from pg_tables where schemaname = 'public'"
    async with trio_asyncio.open_loop():
        async with triopg.connect(pg.url) as conn:
            assert await conn.fetchval("select 1") == 1

        url = pg.create_database("fresh_one")
        assert url == f"postgresql://postgres@/fresh_one?host={pg.socket_dir}"
        async with triopg.connect(url) as conn:
            assert await conn.fetchval("select current_database()") == "fresh_one"
            assert await conn.fetchval(tables) == 0
            await conn.execute("create table t (x int)")

        # Kept with replace=False; empty again with the default replace=True.
        for replace, expected in ((False, 1), (True, 0)):
            async with triopg.connect(pg.create_database("fresh_one", replace=replace)) as conn:
                assert await conn.fetchval(tables) == expected

    pg.drop_database("fresh_one")
    with pytest.raises(ValueError):
        pg.create_database("bad-name; drop")


def test_postgres_restart_reuses_data(tmp_path: Path) -> None:
    data = tmp_path / "pgdata"
    with EmbeddedPostgres(data) as first:
        first.create_database("kept")
    assert first.stop_seconds is not None and not first.running
    with EmbeddedPostgres(data) as second:
        assert "kept" in second._psql("select datname from pg_database").split()
        assert second.create_database("kept", replace=False) == second.url_for("kept")


async def test_two_s3_instances_side_by_side_and_restart(
    s3: EmbeddedS3, store: MinioStore, tmp_path: Path
) -> None:
    other = EmbeddedS3(tmp_path / "other", bucket="storage-test")
    await trio.to_thread.run_sync(other.start)
    try:
        assert other.endpoint != s3.endpoint
        assert _all_ports(other).isdisjoint(_all_ports(s3))
        assert (other.access_key, other.secret_key) != (s3.access_key, s3.secret_key)
        other_store = MinioStore(other.s3_config())
        await other_store.put_bytes("only/here", b"other")
        assert await store.stat("only/here") is None
        assert await other_store.get_bytes("only/here") == b"other"
        keys, ports = (other.access_key, other.secret_key), other.ports
    finally:
        await trio.to_thread.run_sync(other.stop)
    assert other.stop_seconds is not None and other.stop_seconds < 10
    assert not (tmp_path / "other" / "weed.pid").exists()

    # Stopped: the store fails fast with StorageUnavailable.
    with trio.fail_after(5), pytest.raises(StorageUnavailable):
        await other_store.get_bytes("only/here")

    # Second run on the same folder: same credentials and ports, data still there.
    again = EmbeddedS3(tmp_path / "other", bucket="storage-test")
    await trio.to_thread.run_sync(again.start)
    try:
        assert (again.access_key, again.secret_key) == keys
        assert again.ports == ports
        assert await other_store.get_bytes("only/here") == b"other"
    finally:
        await trio.to_thread.run_sync(again.stop)
        other_store.close()
