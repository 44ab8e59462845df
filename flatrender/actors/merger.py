"""The Merger: turns a job's validated segments into one export in object storage (DESIGN §7).

It never carries video through the event loop: segments are downloaded, stream-copied (no
re-encode) and probed in worker threads, at most ``concurrency`` merges at a time. It does not
write rows: it answers the job actor with what it stored, and the job actor records the export
and completes the job in one transaction. Export ids derive from the job id, so a merge repeated
after a daemon crash overwrites its own objects instead of leaving orphans.
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import TypeVar
from uuid import UUID, uuid5

import attrs
import trio

from flatrender import media
from flatrender.storage import ObjectNotFound, ObjectStore

log = logging.getLogger("flatrender.merger")
T = TypeVar("T")

EXPORT_NAMESPACE = UUID("8a1f4c2e-0b7d-4e55-9f3a-6c2d1e0b9a77")


def export_id_for(job_id: UUID) -> UUID:
    return uuid5(EXPORT_NAMESPACE, str(job_id))


@attrs.frozen
class MergeRequest:
    job_id: UUID
    segment_keys: tuple[str, ...]  # in frame order
    expected_frames: int


@attrs.frozen
class MergedExport:
    export_id: UUID
    video_key: str
    thumbnail_key: str
    size_bytes: int
    thumbnail_size_bytes: int
    duration_sec: float
    width: int
    height: int
    frames: int
    preview_b64: str


class MergeFailed(Exception):
    """The segments could not be merged into an exact export (the message says why)."""


class Merger:
    def __init__(self, store: ObjectStore, *, concurrency: int = 2) -> None:
        self.store = store
        self._slots = trio.Semaphore(concurrency)
        self._threads = trio.CapacityLimiter(concurrency)

    async def merge(self, request: MergeRequest) -> MergedExport:
        """Merge, verify the frame count, store video and thumbnail; raises MergeFailed."""
        async with self._slots:
            with tempfile.TemporaryDirectory(prefix="flatrender-merge-") as folder:
                return await self._merge_in(Path(folder), request)

    async def _merge_in(self, folder: Path, request: MergeRequest) -> MergedExport:
        paths = []
        for i, key in enumerate(request.segment_keys):
            path = folder / f"{i:05d}.mp4"
            try:
                await self.store.download_file(key, path)
            except ObjectNotFound as e:  # gone since its validation: no retry brings it back
                raise MergeFailed(f"segment {key} is missing") from e
            paths.append(path)
        out = folder / "export.mp4"
        try:
            info = await self._thread(media.concat_segments, paths, out)
            thumbnail = await self._thread(partial(media.thumbnail_png, out))
            preview = await self._thread(partial(media.preview_png_b64, out))
        except media.MediaError as e:
            raise MergeFailed(f"segments could not be merged: {e}") from e
        if info.frames != request.expected_frames:
            raise MergeFailed(
                f"merged export holds {info.frames} frames, expected {request.expected_frames}"
            )
        export_id = export_id_for(request.job_id)
        video_key = f"exports/{export_id}/video.mp4"
        thumbnail_key = f"exports/{export_id}/thumbnail.png"
        await self.store.put_file(video_key, out, content_type="video/mp4")
        await self.store.put_bytes(thumbnail_key, thumbnail, content_type="image/png")
        log.info(
            "job %s merged: %d segments, %d frames, %d bytes",
            request.job_id,
            len(paths),
            info.frames,
            info.size_bytes,
        )
        return MergedExport(
            export_id=export_id,
            video_key=video_key,
            thumbnail_key=thumbnail_key,
            size_bytes=info.size_bytes,
            thumbnail_size_bytes=len(thumbnail),
            duration_sec=info.duration_sec,
            width=info.width,
            height=info.height,
            frames=info.frames,
            preview_b64=preview,
        )

    async def _thread(self, fn: Callable[..., T], *args: object) -> T:
        return await trio.to_thread.run_sync(fn, *args, limiter=self._threads)
