"""A snapshot's output check on real S3: one decodable PNG, its thumbnail stored, else a failed
attempt (never an exception for a bad file)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import attrs
import pytest

from flatrender import media
from flatrender.actors.validation import SNAPSHOT_THUMBNAIL_WIDTH, StillLimits, check_still
from flatrender.config import Config
from flatrender.storage import MinioStore
from tests.test_media import _png_size, _render


def test_probe_png_accepts_one_image_and_refuses_video_and_truncation(tmp_path: Path) -> None:
    still = tmp_path / "still.png"
    media.render_still(still, frame_number=5, width=64, height=36)
    info = media.probe_png(still)
    assert (info.frames, info.width, info.height, info.codec) == (1, 64, 36, "png")
    with pytest.raises(media.MediaError):
        media.probe_png(_render(tmp_path, 0, 0))  # a one-frame mp4 is not a PNG
    cut = tmp_path / "cut.png"
    cut.write_bytes(still.read_bytes()[:40])
    with pytest.raises(media.MediaError):
        media.probe_png(cut)


async def test_check_still_stores_the_thumbnail_of_a_good_png(
    config: Config, tmp_path: Path
) -> None:
    store = MinioStore(config.s3)
    still = tmp_path / "still.png"
    media.render_still(still, frame_number=9, width=320, height=180)
    await store.put_file("snapshots/t1/image.png", still, "image/png")

    check = await check_still(store, "snapshots/t1/image.png", "snapshots/t1/thumbnail.png")

    assert (check.ok, check.width, check.height) == (True, 320, 180)
    thumbnail = await store.get_bytes("snapshots/t1/thumbnail.png")
    assert _png_size(thumbnail) == (SNAPSHOT_THUMBNAIL_WIDTH, 90)


async def test_check_still_fails_a_missing_or_broken_output_without_a_thumbnail(
    config: Config, tmp_path: Path
) -> None:
    store = MinioStore(config.s3)
    missing = await check_still(store, "snapshots/t2/image.png", "snapshots/t2/thumbnail.png")
    assert not missing.ok and "never uploaded" in (missing.error or "")
    await store.put_bytes("snapshots/t3/image.png", b"\x89PNG\r\n\x1a\n garbage", "image/png")
    broken = await check_still(store, "snapshots/t3/image.png", "snapshots/t3/thumbnail.png")
    assert not broken.ok and "not a valid PNG" in (broken.error or "")
    assert await store.stat("snapshots/t3/thumbnail.png") is None


def test_png_size_reads_the_header_and_probe_png_refuses_a_huge_one_undecoded(
    tmp_path: Path,
) -> None:
    still = tmp_path / "still.png"
    media.render_still(still, frame_number=5, width=64, height=36)
    assert media.png_size(still) == (64, 36)
    # A header that promises 20000x20000 (1.6 GB of pixels) over a few bytes of nothing.
    forged = tmp_path / "forged.png"
    ihdr = (20000).to_bytes(4, "big") * 2 + bytes([8, 6, 0, 0, 0])
    forged.write_bytes(media.PNG_SIGNATURE + (13).to_bytes(4, "big") + b"IHDR" + ihdr + b"\0" * 64)
    assert media.png_size(forged) == (20000, 20000)
    with pytest.raises(media.MediaError, match="20000x20000 PNG, larger than 8192x8192"):
        media.probe_png(forged)
    with pytest.raises(media.MediaError, match="not a PNG"):
        media.png_size(_render(tmp_path, 0, 0))


@attrs.define
class CountingStore:
    inner: MinioStore
    downloads: list[str] = attrs.Factory(list)

    async def download_file(self, key: str, path: Path, max_bytes: int | None = None) -> None:
        self.downloads.append(key)
        await self.inner.download_file(key, path, max_bytes)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


async def test_check_still_refuses_a_png_over_the_byte_cap_without_downloading_it(
    config: Config, tmp_path: Path
) -> None:
    store = CountingStore(MinioStore(config.s3))
    still = tmp_path / "still.png"
    media.render_still(still, frame_number=9, width=64, height=36)
    await store.put_file("snapshots/t4/a.png", still, "image/png")

    check = await check_still(
        store,  # type: ignore[arg-type]
        "snapshots/t4/a.png",
        "snapshots/t4/thumbnail.png",
        StillLimits(max_bytes=100),
    )

    assert not check.ok and "more than 100 allowed" in (check.error or "")
    assert store.downloads == []
    assert await store.stat("snapshots/t4/thumbnail.png") is None


async def test_check_still_refuses_a_png_larger_than_the_resolution_in_either_orientation(
    config: Config, tmp_path: Path
) -> None:
    store = MinioStore(config.s3)
    limits = StillLimits(max_sides=(160, 90))
    for name, (width, height), ok in [
        ("wide", (320, 180), False),
        ("tall", (90, 320), False),
        ("portrait", (90, 160), True),
        ("landscape", (160, 90), True),
    ]:
        still = tmp_path / f"{name}.png"
        media.render_still(still, frame_number=1, width=width, height=height)
        key, thumbnail = f"snapshots/t5/{name}.png", f"snapshots/t5/{name}-thumbnail.png"
        await store.put_file(key, still, "image/png")

        check = await check_still(store, key, thumbnail, limits)

        assert check.ok is ok, (name, check)
        assert (await store.stat(thumbnail) is not None) is ok
        if not ok:
            assert f"{width}x{height}, larger than 160x90" in (check.error or "")
