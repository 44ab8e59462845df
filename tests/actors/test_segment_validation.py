"""A range's output check on real S3: its size is looked at before it is read, and it is streamed
to the temporary file under the same cap; a too-large object is a failed attempt."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import attrs
import pytest

from flatrender import media
from flatrender.actors.validation import check_output
from flatrender.config import Config
from flatrender.storage import MinioStore, ObjectTooLarge


@attrs.define
class CountingStore:
    inner: MinioStore
    downloads: list[str] = attrs.Factory(list)

    async def download_file(self, key: str, path: Path, max_bytes: int | None = None) -> None:
        self.downloads.append(key)
        await self.inner.download_file(key, path, max_bytes)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


async def test_an_output_over_the_cap_fails_without_being_downloaded(
    config: Config, tmp_path: Path
) -> None:
    store = CountingStore(MinioStore(config.s3))
    segment = tmp_path / "r.mp4"
    media.render_segment(segment, start_frame=0, end_frame=4, frame_rate=25, width=64, height=36)
    await store.put_file("renders/big/r.mp4", segment, "video/mp4")
    size = segment.stat().st_size

    check = await check_output(store, "renders/big/r.mp4", 5, max_bytes=size - 1)

    assert not check.ok and f"is {size} bytes, more than {size - 1}" in (check.error or "")
    assert store.downloads == []
    # At the cap it is read and probed as usual.
    assert (await check_output(store, "renders/big/r.mp4", 5, max_bytes=size)).ok
    assert store.downloads == ["renders/big/r.mp4"]


async def test_a_missing_output_fails_without_a_download(config: Config) -> None:
    store = CountingStore(MinioStore(config.s3))
    check = await check_output(store, "renders/none/r.mp4", 5)
    assert not check.ok and "never uploaded" in (check.error or "")
    assert store.downloads == []


async def test_download_file_stops_past_max_bytes_and_leaves_nothing(
    config: Config, tmp_path: Path
) -> None:
    store = MinioStore(config.s3)
    await store.put_bytes("renders/stream/blob.bin", b"x" * 3_000_000)
    target = tmp_path / "blob.bin"

    with pytest.raises(ObjectTooLarge):
        await store.download_file("renders/stream/blob.bin", target, max_bytes=2_000_000)

    assert os.listdir(tmp_path) == []
    await store.download_file("renders/stream/blob.bin", target, max_bytes=3_000_000)
    assert target.read_bytes() == b"x" * 3_000_000
    assert os.listdir(tmp_path) == ["blob.bin"]
