"""Validation of a range's uploaded output (DESIGN §4): it exists and holds exactly the range.

The object is downloaded and its container header probed in a worker thread; nothing is decoded.
A truncated or mismatched file is a failed attempt, rendered again.
"""

from __future__ import annotations

import tempfile
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
