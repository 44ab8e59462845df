"""Validation of a range's uploaded output (DESIGN §4): it exists and holds exactly the range.

The object's size is looked at first (a range's output above :data:`MAX_SEGMENT_BYTES` is a
failed attempt, never downloaded), then it is streamed to a temporary file under the same cap and
its container header probed in a worker thread; nothing is decoded
but a snapshot's PNG (:func:`check_still`), which is decoded whole and gets its thumbnail here,
once its size in bytes and the width and height in its header are known to be within bounds.
A truncated or mismatched file is a failed attempt, rendered again.

A check that cannot run here (an OSError: this daemon's disk is full, its temporary folder is
gone, ffprobe is missing) says nothing of the node's output: :func:`until_checked` retries it
later instead of failing the range (see there).
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Awaitable, Callable
from functools import partial
from pathlib import Path
from typing import TypeVar

import attrs
import trio

from flatrender import media
from flatrender.domain import snapshots as snap
from flatrender.storage import ObjectNotFound, ObjectStore, ObjectTooLarge

# Far above an honest range (at most [jobs] max_chunk_frames frames, Lossless at 4K), and what
# one validation may put in the temporary folder.
MAX_SEGMENT_BYTES = 8 * 1024**3
# How long a check that could not run here waits before it runs again: doubling up to the max.
LOCAL_RETRY_INITIAL_SEC = 5.0
LOCAL_RETRY_MAX_SEC = 300.0

log = logging.getLogger("flatrender.validation")

T = TypeVar("T")


@attrs.frozen
class OutputCheck:
    ok: bool
    error: str | None = None
    preview_b64: str | None = None  # a small PNG of the range's first frame, for progress
    # A still's size (check_still).
    width: int | None = None
    height: int | None = None


_THREADS = trio.CapacityLimiter(4)


async def check_output(
    store: ObjectStore, key: str, expected_frames: int, max_bytes: int = MAX_SEGMENT_BYTES
) -> OutputCheck:
    """Never raises for a bad file (that is a failed attempt); StorageUnavailable propagates."""
    stored = await store.stat(key)
    if stored is None:
        return OutputCheck(False, f"output {key} was never uploaded")
    if stored.size > max_bytes:
        return OutputCheck(False, f"output {key} is {stored.size} bytes, more than {max_bytes}")
    with tempfile.TemporaryDirectory(prefix="flatrender-validate-") as folder:
        path = Path(folder) / Path(key).name
        try:
            await store.download_file(key, path, max_bytes)
        except ObjectNotFound:
            return OutputCheck(False, f"output {key} was never uploaded")
        except ObjectTooLarge:  # replaced since the stat
            return OutputCheck(False, f"output {key} is more than {max_bytes} bytes")
        try:
            info = await trio.to_thread.run_sync(media.probe_video, path, limiter=_THREADS)
            preview = await trio.to_thread.run_sync(media.preview_png_b64, path, limiter=_THREADS)
        except media.MediaError as e:
            return OutputCheck(False, f"output {key} is not a valid video: {e}")
    if info.frames != expected_frames:
        return OutputCheck(False, f"output holds {info.frames} frames, expected {expected_frames}")
    return OutputCheck(True, preview_b64=preview)


async def until_checked(check: Callable[[], Awaitable[T]], what: str) -> T:
    """Run ``check`` until it answers. An OSError is this daemon's own trouble, not the output's:
    the storage adapter turns network errors into StorageUnavailable, so what is left is the
    local disk (full, the temporary folder missing or not writable) or a tool missing. Failing
    the range for it would render it again on another node, count it against the job's
    attempts and blame a node that did its work; crashing the job actor would meet the same
    error in the validation its restart runs, until the supervisor escalates. So the range stays
    Rendered and its check runs again after a pause (doubling up to ``LOCAL_RETRY_MAX_SEC``),
    each failure logged as an error for the operator, who frees the disk; a user may still
    cancel the job meanwhile. A merge (the segments downloaded to this disk) is run the same
    way."""
    delay = LOCAL_RETRY_INITIAL_SEC
    while True:
        try:
            return await check()
        except OSError as e:
            log.error("%s cannot be checked here, again in %.0f s: %r", what, delay, e)
        await trio.sleep(delay)
        delay = min(delay * 2, LOCAL_RETRY_MAX_SEC)


SNAPSHOT_THUMBNAIL_WIDTH = 160


@attrs.frozen
class StillLimits:
    """What a snapshot's PNG may weigh and measure before it is downloaded or decoded: the
    snapshot's resolution (:data:`flatrender.domain.snapshots.MAX_IMAGE_SIDES`) in either
    orientation, and a byte cap well above any honest PNG of that size."""

    max_bytes: int = snap.MAX_IMAGE_BYTES
    max_sides: tuple[int, int] = snap.MAX_IMAGE_SIDES  # (long side, short side)


async def check_still(
    store: ObjectStore, key: str, thumbnail_key: str, limits: StillLimits = StillLimits()
) -> OutputCheck:
    """A snapshot's output: ``key`` holds one decodable PNG within ``limits``; its thumbnail is
    then stored at ``thumbnail_key`` before this answers ok. The object's size is looked at
    before it is downloaded and its header before it is decoded. Never raises for a bad file;
    StorageUnavailable propagates (nothing is answered: the validation runs again when the actor
    restarts)."""
    info = await store.stat(key)
    if info is None:
        return OutputCheck(False, f"output {key} was never uploaded")
    if info.size > limits.max_bytes:
        return OutputCheck(
            False, f"output {key} is {info.size} bytes, more than {limits.max_bytes} allowed"
        )
    with tempfile.TemporaryDirectory(prefix="flatrender-validate-") as folder:
        path = Path(folder) / Path(key).name
        try:
            await store.download_file(key, path, limits.max_bytes)
        except ObjectNotFound:
            return OutputCheck(False, f"output {key} was never uploaded")
        except ObjectTooLarge:  # replaced since the stat
            return OutputCheck(False, f"output {key} is more than {limits.max_bytes} bytes")
        try:
            width, height = media.png_size(path)
            long, short = limits.max_sides
            if max(width, height) > long or min(width, height) > short:
                return OutputCheck(
                    False,
                    f"output {key} is {width}x{height}, larger than {long}x{short}",
                )
            probe = partial(media.probe_png, path, max_size=(long, long))
            still = await trio.to_thread.run_sync(probe, limiter=_THREADS)
            thumbnail = await trio.to_thread.run_sync(
                partial(media.thumbnail_png, path, max_width=SNAPSHOT_THUMBNAIL_WIDTH),
                limiter=_THREADS,
            )
        except media.MediaError as e:
            return OutputCheck(False, f"output {key} is not a valid PNG: {e}")
    await store.put_bytes(thumbnail_key, thumbnail, "image/png")
    return OutputCheck(True, width=still.width, height=still.height)
