"""A snapshot's output check on real S3: one decodable PNG, its thumbnail stored, else a failed
attempt (never an exception for a bad file)."""

from __future__ import annotations

from pathlib import Path

import pytest

from flatrender import media
from flatrender.actors.validation import SNAPSHOT_THUMBNAIL_WIDTH, check_still
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
