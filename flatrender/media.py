"""All the video work of FlatRender: synthetic renders, probing, merging, thumbnails.

Every function here is synchronous and may block on CPU and disk: async callers run them in
``trio.to_thread.run_sync`` (DESIGN §7: no video crosses the event loop).

The synthetic picture for a global frame number ``n`` encodes ``n`` in a grid of
``_CODE_COLS x _CODE_ROWS`` black/white luma blocks over the top two thirds of the image (bit 0
at the top left, row-major), above a luma ramp that scrolls with ``n``; the chroma planes tint the
whole picture with a colour computed from ``n``. The blocks survive H.264 compression and
scaling, so :func:`decode_frame_signatures` recovers ``n`` from any decoded frame of at least
~64x36 pixels.
"""

from __future__ import annotations

import base64
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from fractions import Fraction
from pathlib import Path

import attrs
import av
from av.container import InputContainer
from av.video.frame import VideoFrame
from av.video.stream import VideoStream

_CODE_COLS = 8
_CODE_ROWS = 3
MAX_FRAME_NUMBER = 2 ** (_CODE_COLS * _CODE_ROWS) - 1
_Y_ONE, _Y_ZERO = 235, 16
# Demuxers we accept as render outputs: mp4/mov segments and exports, PNG stills.
_ACCEPTED_FORMATS = frozenset({"mov", "mp4", "png_pipe", "image2"})
_IMAGE_FORMATS = frozenset({"png_pipe", "image2"})
# No render of ours is wider or taller (8K); a header that says so is refused before decoding.
MAX_PICTURE_SIDE = 8192


class MediaError(Exception):
    """The file is missing, empty, truncated, not a video/image, or otherwise unusable."""


@attrs.frozen
class VideoInfo:
    """What a container header says about its first video stream."""

    frames: int
    frame_rate: float
    width: int
    height: int
    duration_sec: float
    codec: str
    size_bytes: int


# --- the synthetic picture ---------------------------------------------------------------------


def _spans(total: int, parts: int) -> list[tuple[int, int]]:
    return [(i * total // parts, (i + 1) * total // parts) for i in range(parts)]


def _code_height(height: int) -> int:
    return height * 2 // 3


def _synthetic_frame(n: int, width: int, height: int) -> VideoFrame:
    """The yuv420p picture of global frame ``n`` (see the module docstring)."""
    if not 0 <= n <= MAX_FRAME_NUMBER:
        raise ValueError(f"frame number {n} outside 0..{MAX_FRAME_NUMBER}")
    if width < 16 or height < 16 or width % 2 or height % 2:
        raise ValueError(f"dimensions must be even and >= 16, got {width}x{height}")
    frame = VideoFrame(width, height, "yuv420p")
    y_plane, u_plane, v_plane = frame.planes
    stride = y_plane.line_size
    pad = bytes(stride - width)
    rows: list[bytes] = []
    code_h = _code_height(height)
    for r, (top, bottom) in enumerate(_spans(code_h, _CODE_ROWS)):
        row = bytearray()
        for c, (left, right) in enumerate(_spans(width, _CODE_COLS)):
            bit = (n >> (r * _CODE_COLS + c)) & 1
            row += bytes([_Y_ONE if bit else _Y_ZERO]) * (right - left)
        rows += [bytes(row) + pad] * (bottom - top)
    ramp = bytes(16 + (x * 4 + n * 8) % 220 for x in range(width)) + pad
    rows += [ramp] * (height - code_h)
    y_plane.update(b"".join(rows))
    u_plane.update(bytes([80 + n * 7 % 96]) * u_plane.buffer_size)
    v_plane.update(bytes([80 + n * 13 % 96]) * v_plane.buffer_size)
    return frame


def _read_signature(frame: VideoFrame) -> int:
    """Recover the frame number drawn by :func:`_synthetic_frame` from a decoded frame."""
    gray = frame.reformat(format="gray")
    plane = gray.planes[0]
    data, stride = bytes(plane), plane.line_size
    value = 0
    for r, (top, bottom) in enumerate(_spans(_code_height(gray.height), _CODE_ROWS)):
        for c, (left, right) in enumerate(_spans(gray.width, _CODE_COLS)):
            # Average the inner half of the block: edges blur under compression and scaling.
            ys = range(top + (bottom - top) // 4, bottom - (bottom - top) // 4)
            xs = slice(left + (right - left) // 4, right - (right - left) // 4)
            total = sum(sum(data[y * stride :][xs]) for y in ys)
            count = len(ys) * (xs.stop - xs.start)
            if count and total / count >= 128:
                value |= 1 << (r * _CODE_COLS + c)
    return value


def _encode_png(frame: VideoFrame) -> bytes:
    rgb = frame.reformat(format="rgb24")
    ctx = av.CodecContext.create("png", "w")
    ctx.width, ctx.height, ctx.pix_fmt = rgb.width, rgb.height, "rgb24"
    return b"".join(bytes(p) for p in [*ctx.encode(rgb), *ctx.encode(None)])


# --- rendering (what the simulated node agent does) ------------------------------------------


def render_segment(
    path: Path,
    *,
    start_frame: int,
    end_frame: int,
    frame_rate: int,
    width: int = 160,
    height: int = 90,
    label: str = "",
) -> int:
    """Write an H.264 mp4 holding exactly global frames ``start_frame..end_frame`` (inclusive).

    Timestamps start at 0 with time base ``1/frame_rate``; the segment starts with a keyframe and
    has no B-frames, so segments of equal size and rate can be stream-copied one after the other
    (:func:`concat_segments`). ``label`` goes to the container's ``title`` metadata. Returns the
    file size in bytes.
    """
    if end_frame < start_frame or start_frame < 0:
        raise ValueError(f"bad frame range {start_frame}..{end_frame}")
    if frame_rate <= 0:
        raise ValueError(f"bad frame rate {frame_rate}")
    time_base = Fraction(1, frame_rate)
    with av.open(str(path), "w", format="mp4") as output:
        if label:
            output.metadata["title"] = label
        stream = output.add_stream(
            "libx264",
            rate=frame_rate,
            options={"preset": "ultrafast", "g": str(frame_rate), "bf": "0"},
        )
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.codec_context.time_base = time_base
        for i, n in enumerate(range(start_frame, end_frame + 1)):
            frame = _synthetic_frame(n, width, height)
            frame.pts, frame.time_base = i, time_base
            output.mux(stream.encode(frame))
        output.mux(stream.encode(None))
    return path.stat().st_size


def render_still(
    path: Path, *, frame_number: int, width: int = 320, height: int = 180, label: str = ""
) -> None:
    """Write a PNG of global frame ``frame_number``: the same picture as that video frame.

    ``label`` is accepted for symmetry with :func:`render_segment` and not stored.
    """
    path.write_bytes(_encode_png(_synthetic_frame(frame_number, width, height)))


# --- probing ---------------------------------------------------------------------------------


def _is_image(container: InputContainer) -> bool:
    return bool(_IMAGE_FORMATS & set(container.format.name.split(",")))


@contextmanager
def _open_video(path: Path) -> Iterator[tuple[InputContainer, VideoStream]]:
    """Open ``path`` for reading; MediaError unless it is an accepted container with video."""
    if not path.is_file():
        raise MediaError(f"{path}: no such file")
    if path.stat().st_size == 0:
        raise MediaError(f"{path}: empty file")
    try:
        container = av.open(str(path), "r")
    except (av.FFmpegError, OSError, UnicodeDecodeError) as exc:
        raise MediaError(f"{path}: unreadable media: {exc}") from exc
    with container:
        if not _ACCEPTED_FORMATS & set(container.format.name.split(",")):
            raise MediaError(f"{path}: unexpected format {container.format.name}")
        if not container.streams.video:
            raise MediaError(f"{path}: no video stream")
        stream = container.streams.video[0]
        if stream.codec_context is None or stream.width <= 0 or stream.height <= 0:
            raise MediaError(f"{path}: video stream without dimensions")
        try:
            yield container, stream
        except av.FFmpegError as exc:
            raise MediaError(f"{path}: {exc}") from exc


def probe_video(path: Path) -> VideoInfo:
    """Read the container header of ``path`` without decoding its frames.

    Raises MediaError for a missing, empty, non-mp4/PNG or truncated file: an mp4 is truncated when
    its top-level boxes run past the end of the file or its sample index points past it. A single
    image (PNG) is decoded, since that is cheap and the only way to validate it: ``frames == 1``;
    a picture wider or taller than :data:`MAX_PICTURE_SIDE` is refused before anything is decoded.
    """
    size = path.stat().st_size if path.is_file() else 0
    with _open_video(path) as (container, stream):
        if max(stream.width, stream.height) > MAX_PICTURE_SIDE:  # from the header: not decoded
            raise MediaError(f"{path}: {stream.width}x{stream.height} is too large a picture")
        if _is_image(container):
            try:
                next(container.decode(stream))
            except (av.FFmpegError, StopIteration) as exc:
                raise MediaError(f"{path}: undecodable image") from exc
            return VideoInfo(1, 0.0, stream.width, stream.height, 0.0, stream.codec.name, size)
        _check_mp4_boxes(path, size)
        frames = stream.frames
        entries = stream.index_entries
        if frames <= 0 or len(entries) == 0:
            raise MediaError(f"{path}: no frame index in the header")
        if max(e.pos + e.size for e in entries) > size:
            raise MediaError(f"{path}: truncated (index points past the end of the file)")
        rate = stream.average_rate or stream.guessed_rate or Fraction(0)
        if stream.duration is not None and stream.time_base is not None:
            duration = float(stream.duration * stream.time_base)
        else:
            duration = frames / float(rate) if rate else 0.0
        return VideoInfo(
            frames, float(rate), stream.width, stream.height, duration, stream.codec.name, size
        )


PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def png_size(path: Path) -> tuple[int, int]:
    """Width and height as the PNG's IHDR header declares them, read without decoding.

    Raises MediaError unless ``path`` begins with the PNG signature and an IHDR chunk.
    """
    try:
        with path.open("rb") as f:
            head = f.read(24)
    except OSError as exc:
        raise MediaError(f"{path}: unreadable: {exc}") from exc
    if len(head) < 24 or head[:8] != PNG_SIGNATURE or head[12:16] != b"IHDR":
        raise MediaError(f"{path}: not a PNG (no signature and IHDR header)")
    return int.from_bytes(head[16:20], "big"), int.from_bytes(head[20:24], "big")


def probe_png(
    path: Path, *, max_size: tuple[int, int] = (MAX_PICTURE_SIDE, MAX_PICTURE_SIDE)
) -> VideoInfo:
    """A snapshot's output: exactly one PNG image, decoded whole (``frames == 1``).

    Its header is read first: a picture wider or taller than ``max_size`` (width, height) is
    refused before anything is decoded, so a hostile header cannot make the decoder allocate
    gigabytes. Raises MediaError for that, and for a missing, empty, truncated or undecodable
    file, or any other kind of picture or video.
    """
    width, height = png_size(path)
    if not (0 < width <= max_size[0] and 0 < height <= max_size[1]):
        raise MediaError(f"{path}: a {width}x{height} PNG, larger than {max_size[0]}x{max_size[1]}")
    info = probe_video(path)
    if info.codec != "png" or info.frames != 1:
        raise MediaError(f"{path}: a {info.codec} of {info.frames} frames, not one PNG image")
    return info


def _check_mp4_boxes(path: Path, size: int) -> None:
    """MediaError unless the top-level ISO-BMFF boxes of ``path`` tile its ``size`` bytes."""
    with path.open("rb") as f:
        pos = 0
        while pos < size:
            f.seek(pos)
            header = f.read(16)
            if len(header) < 8:
                raise MediaError(f"{path}: truncated box header at byte {pos}")
            box_size = int.from_bytes(header[:4], "big")
            if box_size == 1 and len(header) == 16:
                box_size = int.from_bytes(header[8:16], "big")
            elif box_size == 0:  # "extends to the end of the file"
                box_size = size - pos
            if box_size < 8 or pos + box_size > size:
                raise MediaError(f"{path}: truncated (box at byte {pos} runs past the end)")
            pos += box_size


def probe_frame_count(path: Path) -> int:
    """The frame count from the header of ``path`` (1 for an image); MediaError if unusable."""
    return probe_video(path).frames


# --- merging ---------------------------------------------------------------------------------


def concat_segments(paths: Sequence[Path], out: Path) -> VideoInfo:
    """Stream-copy the segments, in order, into one mp4 at ``out`` without re-encoding.

    Segment k's timestamps are shifted by the total duration of segments 0..k-1, so the result is
    continuous; its ``moov`` is written at the front (faststart). The segments must be mp4 files
    sharing codec, dimensions and codec headers (H.264 SPS/PPS), without B-frames. The result is
    probed and must hold exactly the sum of the segments' frames. Raises MediaError (leaving no
    file at ``out``) when an input is unusable or the result is wrong; ValueError for no inputs.
    """
    if not paths:
        raise ValueError("nothing to concatenate")
    expected = sum(probe_video(p).frames for p in paths)
    try:
        _concat(paths, out)
        info = probe_video(out)
    except BaseException:
        out.unlink(missing_ok=True)
        raise
    if info.frames != expected:
        out.unlink(missing_ok=True)
        raise MediaError(f"merged {info.frames} frames, expected {expected}")
    return info


def _concat(paths: Sequence[Path], out: Path) -> None:
    offset = Fraction(0)  # seconds already written
    with av.open(str(out), "w", format="mp4", options={"movflags": "+faststart"}) as output:
        out_stream: VideoStream | None = None
        reference: tuple[str, int, int, bytes | None] | None = None
        for path in paths:
            with _open_video(path) as (container, stream):
                headers = stream.codec_context.extradata
                shape = (stream.codec.name, stream.width, stream.height, headers)
                if _is_image(container):
                    raise MediaError(f"{path}: an image, not a video segment")
                if out_stream is None:
                    out_stream = output.add_stream_from_template(stream)
                    reference = shape
                elif shape != reference:
                    raise MediaError(f"{path}: codec/size/headers differ from the first segment")
                time_base = stream.time_base or Fraction(1, 90000)
                start = stream.start_time or 0
                shift = round(offset / time_base) - start
                end = start
                for packet in container.demux(stream):
                    if packet.dts is None or packet.pts is None:
                        continue  # the demuxer's final flush packet
                    end = max(end, packet.pts + (packet.duration or 0))
                    packet.pts += shift
                    packet.dts += shift
                    packet.stream = out_stream
                    output.mux(packet)
                offset += (end - start) * time_base


# --- pictures of videos ----------------------------------------------------------------------


def _first_frame(path: Path) -> VideoFrame:
    with _open_video(path) as (container, stream):
        try:
            return next(container.decode(stream))
        except StopIteration:
            raise MediaError(f"{path}: no decodable frame") from None


def _scaled(frame: VideoFrame, width: int) -> VideoFrame:
    width = max(1, min(width, frame.width))
    height = max(1, round(frame.height * width / frame.width))
    return frame.reformat(width=width, height=height, format="rgb24")


def thumbnail_png(video_or_png: Path, *, max_width: int = 320) -> bytes:
    """PNG bytes of the first frame (only that frame is decoded), at most ``max_width`` wide,
    keeping the aspect ratio (never upscaled). MediaError if the file is unusable."""
    return _encode_png(_scaled(_first_frame(video_or_png), max_width))


def preview_png_b64(path: Path, *, max_bytes: int = 8192) -> str:
    """Base64 of a PNG of the first frame no larger than ``max_bytes`` (DESIGN §6
    ``image_preview_b64``): starts at 160 px wide and shrinks until the PNG fits."""
    frame = _first_frame(path)
    width = min(160, frame.width)
    while True:
        png = _encode_png(_scaled(frame, width))
        if len(png) <= max_bytes or width <= 8:
            break
        width = width * 3 // 4
    if len(png) > max_bytes:
        raise MediaError(f"{path}: cannot make a preview within {max_bytes} bytes")
    return base64.b64encode(png).decode("ascii")


def decode_frame_signatures(path: Path) -> list[int]:
    """Decode every frame and return the global frame number drawn in each, in display order.

    Meant for tests and validation tools; only pictures made by :func:`render_segment` or
    :func:`render_still` (or stream copies and scalings of them) carry meaningful signatures.
    """
    with _open_video(path) as (container, stream):
        return [_read_signature(frame) for frame in container.decode(stream)]
