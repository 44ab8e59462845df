"""flatrender.media: synthetic renders, header probing, stream-copy merging, thumbnails."""

from __future__ import annotations

import base64
import time
from collections.abc import Sequence
from fractions import Fraction
from pathlib import Path

import av
import pytest

from flatrender.media import (
    MediaError,
    VideoInfo,
    concat_segments,
    decode_frame_signatures,
    preview_png_b64,
    probe_frame_count,
    probe_video,
    render_segment,
    render_still,
    thumbnail_png,
)

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _render(
    tmp_path: Path, start: int, end: int, rate: int = 30, width: int = 160, height: int = 90
) -> Path:
    path = tmp_path / f"seg-{start}-{end}-{rate}.mp4"
    render_segment(
        path, start_frame=start, end_frame=end, frame_rate=rate, width=width, height=height
    )
    return path


def _packet_payloads(paths: Sequence[Path]) -> list[bytes]:
    payloads = []
    for path in paths:
        with av.open(str(path)) as container:
            for packet in container.demux(container.streams.video[0]):
                if packet.dts is not None:
                    payloads.append(bytes(packet))
    return payloads


def _pts_in_frames(path: Path, rate: int) -> list[Fraction]:
    """Each packet's pts, in frame periods; also checks the first packet is a keyframe."""
    with av.open(str(path)) as container:
        packets = [p for p in container.demux(video=0) if p.dts is not None]
    assert packets[0].is_keyframe
    return [(p.pts or 0) * p.time_base * rate for p in packets]


def _png_size(png: bytes) -> tuple[int, int]:
    assert png.startswith(PNG_MAGIC)
    return int.from_bytes(png[16:20], "big"), int.from_bytes(png[20:24], "big")


@pytest.mark.parametrize(
    ("start", "end", "rate"),
    [(0, 0, 24), (0, 29, 25), (100, 160, 30), (7, 36, 60), (0, 60, 24)],
)
def test_segment_has_exact_frames(tmp_path: Path, start: int, end: int, rate: int) -> None:
    path = tmp_path / "seg.mp4"
    size = render_segment(path, start_frame=start, end_frame=end, frame_rate=rate, label="t")
    count = end - start + 1
    info = probe_video(path)
    assert info == VideoInfo(
        frames=count,
        frame_rate=pytest.approx(rate),  # type: ignore[arg-type]
        width=160,
        height=90,
        duration_sec=pytest.approx(count / rate),  # type: ignore[arg-type]
        codec="h264",
        size_bytes=size,
    )
    assert size == path.stat().st_size
    assert probe_frame_count(path) == count
    assert decode_frame_signatures(path) == list(range(start, end + 1))
    assert _pts_in_frames(path, rate) == list(range(count))


def test_signatures_survive_odd_strides_and_big_numbers(tmp_path: Path) -> None:
    path = _render(tmp_path, 16_000_000, 16_000_004, 25, width=100, height=56)
    assert decode_frame_signatures(path) == list(range(16_000_000, 16_000_005))
    with pytest.raises(ValueError):
        render_segment(tmp_path / "x.mp4", start_frame=5, end_frame=4, frame_rate=30)
    with pytest.raises(ValueError):
        render_segment(tmp_path / "x.mp4", start_frame=0, end_frame=1, frame_rate=30, width=161)


def test_render_is_fast(tmp_path: Path) -> None:
    t0 = time.perf_counter()
    _render(tmp_path, 0, 29)
    assert time.perf_counter() - t0 < 0.5


def test_probe_reads_the_header_without_decoding(tmp_path: Path) -> None:
    path = _render(tmp_path, 0, 299)
    # Wipe every coded frame: the header still tells the count, decoding now fails.
    data = bytearray(path.read_bytes())
    mdat, moov = data.find(b"mdat"), data.find(b"moov")
    assert 0 < mdat < moov
    data[mdat + 4 : moov - 4] = bytes(moov - 4 - (mdat + 4))
    path.write_bytes(bytes(data))
    t0 = time.perf_counter()
    assert probe_frame_count(path) == 300
    assert time.perf_counter() - t0 < 0.05
    with pytest.raises(MediaError):
        decode_frame_signatures(path)


@pytest.mark.parametrize("faststart", [False, True])
def test_truncated_file_is_rejected(tmp_path: Path, faststart: bool) -> None:
    path = _render(tmp_path, 0, 29)
    if faststart:  # moov at the front: the header alone looks complete
        path = tmp_path / "merged.mp4"
        concat_segments([_render(tmp_path, 0, 29)], path)
    data = path.read_bytes()
    for cut in (len(data) // 2, len(data) - 1, 100):
        cut_path = tmp_path / f"cut-{cut}.mp4"
        cut_path.write_bytes(data[:cut])
        with pytest.raises(MediaError):
            probe_video(cut_path)


def test_bad_inputs_are_rejected(tmp_path: Path) -> None:
    empty = tmp_path / "empty.mp4"
    empty.write_bytes(b"")
    text = tmp_path / "notes.txt"
    text.write_text("hello world\n" * 50)
    junk = tmp_path / "junk.mp4"
    junk.write_bytes(bytes(range(256)) * 20)
    cut_png = tmp_path / "cut.png"
    render_still(cut_png, frame_number=3)
    cut_png.write_bytes(cut_png.read_bytes()[:60])
    for path in (tmp_path / "missing.mp4", empty, text, junk, cut_png):
        with pytest.raises(MediaError):
            probe_video(path)
        with pytest.raises(MediaError):
            thumbnail_png(path)


def test_concat_stream_copies_in_order(tmp_path: Path) -> None:
    segments = [_render(tmp_path, a, b) for a, b in [(0, 29), (30, 59), (60, 74)]]
    out = tmp_path / "export.mp4"
    t0 = time.perf_counter()
    info = concat_segments(segments, out)
    assert time.perf_counter() - t0 < 0.5
    assert info.frames == 75 == probe_frame_count(out)
    assert info.duration_sec == pytest.approx(2.5, abs=0.01)
    assert (info.codec, info.width, info.height, info.frame_rate) == ("h264", 160, 90, 30.0)
    assert decode_frame_signatures(out) == list(range(75))
    # No re-encode: the coded frames are byte-for-byte the segments' ones.
    assert _packet_payloads([out]) == _packet_payloads(segments)
    assert info.size_bytes == pytest.approx(sum(p.stat().st_size for p in segments), rel=0.1)
    assert _pts_in_frames(out, 30) == list(range(75))
    data = out.read_bytes()
    assert data.find(b"moov") < data.find(b"mdat")  # faststart


@pytest.mark.parametrize("rate", [24, 60])
def test_concat_other_rates(tmp_path: Path, rate: int) -> None:
    segments = [_render(tmp_path, a, b, rate) for a, b in [(0, 9), (10, 10), (11, 40)]]
    info = concat_segments(segments, tmp_path / "out.mp4")
    assert info.frames == 41
    assert info.duration_sec == pytest.approx(41 / rate, abs=0.01)
    assert decode_frame_signatures(tmp_path / "out.mp4") == list(range(41))


def test_concat_refuses_bad_inputs(tmp_path: Path) -> None:
    out = tmp_path / "out.mp4"
    good = _render(tmp_path, 0, 9)
    other_size = _render(tmp_path, 10, 19, width=320, height=180)
    with pytest.raises(MediaError):
        concat_segments([good, other_size], out)
    assert not out.exists()
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(good.read_bytes()[:2000])
    with pytest.raises(MediaError):
        concat_segments([good, cut], out)
    assert not out.exists()
    still = tmp_path / "still.png"
    render_still(still, frame_number=20, width=160, height=90)
    with pytest.raises(MediaError):
        concat_segments([good, still], out)
    assert not out.exists()
    with pytest.raises(ValueError):
        concat_segments([], out)


def test_still_png(tmp_path: Path) -> None:
    path = tmp_path / "still.png"
    render_still(path, frame_number=1234, width=320, height=180)
    assert path.read_bytes().startswith(PNG_MAGIC)
    info = probe_video(path)
    assert (info.frames, info.width, info.height, info.codec) == (1, 320, 180, "png")
    assert probe_frame_count(path) == 1
    assert decode_frame_signatures(path) == [1234]


def test_thumbnails(tmp_path: Path) -> None:
    video = _render(tmp_path, 42, 50)
    png = thumbnail_png(video, max_width=100)
    assert _png_size(png) == (100, 56)
    assert _png_size(thumbnail_png(video)) == (160, 90)  # never upscaled
    still = tmp_path / "big.png"
    render_still(still, frame_number=7, width=1280, height=720)
    thumb = tmp_path / "thumb.png"
    thumb.write_bytes(thumbnail_png(still, max_width=320))
    assert (probe_video(thumb).width, probe_video(thumb).height) == (320, 180)
    assert decode_frame_signatures(thumb) == [7]  # the same picture, scaled


def test_preview_fits(tmp_path: Path) -> None:
    still = tmp_path / "big.png"
    render_still(still, frame_number=99, width=1280, height=720)
    for path in (still, _render(tmp_path, 0, 3)):
        png = base64.b64decode(preview_png_b64(path))
        assert png.startswith(PNG_MAGIC)
        assert len(png) <= 8192
        small = base64.b64decode(preview_png_b64(path, max_bytes=600))
        assert len(small) <= 600
        assert _png_size(small)[0] < _png_size(png)[0]
