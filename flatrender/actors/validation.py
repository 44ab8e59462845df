"""Validation of a range's uploaded output (DESIGN §4): it exists and holds exactly the range.

The object is downloaded and its container header probed in a worker thread; nothing is decoded
but a snapshot's PNG (:func:`check_still`), which is decoded whole and gets its thumbnail here.
A truncated or mismatched file is a failed attempt, rendered again.
"""

from __future__ import annotations

import tempfile
from functools import partial
from pathlib import Path

import attrs
import trio

from flatrender import media
from flatrender.storage import ObjectNotFound, ObjectStore


@attrs.frozen
class OutputCheck:
    ok: bool
    error: str | None = None
    preview_b64: str | None = None  # a small PNG of the range's first frame, for progress
    # A still's size (check_still).
    width: int | None = None
    height: int | None = None


_THREADS = trio.CapacityLimiter(4)


async def check_output(store: ObjectStore, key: str, expected_frames: int) -> OutputCheck:
    """Never raises for a bad file (that is a failed attempt); StorageUnavailable propagates."""
    with tempfile.TemporaryDirectory(prefix="flatrender-validate-") as folder:
        path = Path(folder) / Path(key).name
        try:
            await store.download_file(key, path)
        except ObjectNotFound:
            return OutputCheck(False, f"output {key} was never uploaded")
        try:
            info = await trio.to_thread.run_sync(media.probe_video, path, limiter=_THREADS)
            preview = await trio.to_thread.run_sync(media.preview_png_b64, path, limiter=_THREADS)
        except media.MediaError as e:
            return OutputCheck(False, f"output {key} is not a valid video: {e}")
    if info.frames != expected_frames:
        return OutputCheck(False, f"output holds {info.frames} frames, expected {expected_frames}")
    return OutputCheck(True, preview_b64=preview)


SNAPSHOT_THUMBNAIL_WIDTH = 160


async def check_still(store: ObjectStore, key: str, thumbnail_key: str) -> OutputCheck:
    """A snapshot's output: ``key`` holds one decodable PNG; its thumbnail is then stored at
    ``thumbnail_key`` before this answers ok. Never raises for a bad file; StorageUnavailable
    propagates (nothing is answered: the validation runs again when the actor restarts)."""
    with tempfile.TemporaryDirectory(prefix="flatrender-validate-") as folder:
        path = Path(folder) / Path(key).name
        try:
            await store.download_file(key, path)
        except ObjectNotFound:
            return OutputCheck(False, f"output {key} was never uploaded")
        try:
            info = await trio.to_thread.run_sync(media.probe_png, path, limiter=_THREADS)
            thumbnail = await trio.to_thread.run_sync(
                partial(media.thumbnail_png, path, max_width=SNAPSHOT_THUMBNAIL_WIDTH),
                limiter=_THREADS,
            )
        except media.MediaError as e:
            return OutputCheck(False, f"output {key} is not a valid PNG: {e}")
    await store.put_bytes(thumbnail_key, thumbnail, "image/png")
    return OutputCheck(True, width=info.width, height=info.height)
