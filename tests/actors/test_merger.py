"""The Merger against the real S3 server: exact, frame-ordered exports, or a clear failure."""

from __future__ import annotations

from pathlib import Path
from uuid import uuid4

import pytest

from flatrender import media
from flatrender.actors.merger import MergeFailed, Merger, MergeRequest, export_id_for
from flatrender.storage import MinioStore


@pytest.fixture
def store(config) -> MinioStore:
    return MinioStore(config.s3)


async def upload_segments(
    store: MinioStore, tmp_path: Path, ranges: list[tuple[int, int]]
) -> tuple[str, ...]:
    keys = []
    job = uuid4()
    for start, end in ranges:
        path = tmp_path / f"{start}.mp4"
        media.render_segment(path, start_frame=start, end_frame=end, frame_rate=30)
        key = f"renders/{job}/{uuid4()}.mp4"
        await store.put_file(key, path, content_type="video/mp4")
        keys.append(key)
    return tuple(keys)


async def test_merge_stores_an_exact_export_and_thumbnail(
    store: MinioStore, tmp_path: Path
) -> None:
    keys = await upload_segments(store, tmp_path, [(0, 29), (30, 59), (60, 74)])
    job_id = uuid4()
    merged = await Merger(store).merge(MergeRequest(job_id, keys, expected_frames=75))
    assert merged.export_id == export_id_for(job_id)
    assert merged.frames == 75 and merged.duration_sec == pytest.approx(2.5)
    local = tmp_path / "export.mp4"
    await store.download_file(merged.video_key, local)
    assert media.decode_frame_signatures(local) == list(range(75))
    thumbnail = await store.get_bytes(merged.thumbnail_key)
    assert thumbnail.startswith(b"\x89PNG")
    info = await store.stat(merged.video_key)
    assert info is not None and info.size == merged.size_bytes


async def test_merge_with_a_missing_frame_fails(store: MinioStore, tmp_path: Path) -> None:
    keys = await upload_segments(store, tmp_path, [(0, 29), (30, 58)])
    with pytest.raises(MergeFailed, match="59 frames, expected 60"):
        await Merger(store).merge(MergeRequest(uuid4(), keys, expected_frames=60))


async def test_merge_of_a_truncated_segment_fails(store: MinioStore, tmp_path: Path) -> None:
    keys = await upload_segments(store, tmp_path, [(0, 29)])
    whole = await store.get_bytes(keys[0])
    await store.put_bytes(keys[0], whole[: len(whole) // 2])
    with pytest.raises(MergeFailed):
        await Merger(store).merge(MergeRequest(uuid4(), keys, expected_frames=30))


async def test_merge_of_a_segment_gone_from_storage_fails(
    store: MinioStore, tmp_path: Path
) -> None:
    keys = await upload_segments(store, tmp_path, [(0, 29), (30, 59)])
    await store.delete(keys[1])
    with pytest.raises(MergeFailed, match=f"segment {keys[1]} is missing"):
        await Merger(store).merge(MergeRequest(uuid4(), keys, expected_frames=60))
