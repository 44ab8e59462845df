"""Snapshots (issue 5): one frame of a scene of a saved project, rendered once and cached.

- **Which frame**: ``frame_number`` is the project's frame number (as in render ranges and in the
  picture the node draws), and it must lie within the scene's ``start_frame..end_frame``.
- **Cache key**: ``(saved_project_id, project version, scene_key, frame_number)``. A new template
  is a new project version, so a changed project never answers with a stale image. At most one
  live snapshot (``Pending``, ``Rendering`` or ``Cached``) per key: concurrent requests share it.
- **The job**: a render job of kind ``Snapshot`` and price type ``Snapshot`` (first in the
  queue, DESIGN §6) over the single frame, PNG output, at :data:`QUALITY`/:data:`RESOLUTION`. Its
  price comes from ``[pricing]`` like any render's (``price_type_factor.Snapshot``, 0 by
  default: a snapshot is free unless the operator prices it).
- **Expiry**: ``[snapshots] expiry_hours`` from the request, and again from the moment the image
  is cached; an expired snapshot is never answered as ``Cached`` and the Reaper removes it.
"""

from __future__ import annotations

import enum
from datetime import datetime, timedelta

from flatrender.config import PricingConfig
from flatrender.domain import pricing

PRICE_TYPE = "Snapshot"
QUALITY = "High"
RESOLUTION = "FullHD"
OUTPUT_FORMAT = "png"
# The largest image a node may answer with: RESOLUTION's long and short side, in either
# orientation (a portrait project renders 1080x1920), and a byte cap no honest PNG of that size
# reaches (1920x1080 RGBA uncompressed is about 8 MiB). Anything larger is a failed attempt.
MAX_IMAGE_SIDES = (1920, 1080)
MAX_IMAGE_BYTES = 32 * 1024 * 1024


class SnapshotStatus(enum.Enum):
    PENDING = "Pending"
    RENDERING = "Rendering"
    CACHED = "Cached"
    FAILED = "Failed"


LIVE = frozenset({SnapshotStatus.PENDING, SnapshotStatus.RENDERING, SnapshotStatus.CACHED})


def frame_errors(
    scene: tuple[int, int] | None, scene_key: str, frame_number: int
) -> list[dict[str, str]]:
    """What is wrong with the requested frame of the scene ``scene_key`` whose first and last
    frames are ``scene`` (None: the project has no such scene), as ``{"field", "message"}``."""
    if scene is None:
        return [{"field": "$.scene_key", "message": f"the project has no scene {scene_key!r}"}]
    first, last = scene
    if not first <= frame_number <= last:
        message = f"frame {frame_number} is outside scene {scene_key!r} (frames {first}-{last})"
        return [{"field": "$.frame_number", "message": message}]
    return []


class Verdict(enum.Enum):
    """What a request does with the live snapshot of its key (if any)."""

    HIT = "hit"  # a fresh cached image: answer it, touch nothing else
    SHARE = "share"  # a render of this key is under way: answer that snapshot
    EXPIRED = "expired"  # a cached image past its expiry: remove it, then render again
    MISS = "miss"  # nothing live: render (or share a render that wins the key meanwhile)


def verdict(status: SnapshotStatus | None, expires: datetime | None, now: datetime) -> Verdict:
    if status is None or expires is None or status is SnapshotStatus.FAILED:
        return Verdict.MISS
    if status is not SnapshotStatus.CACHED:
        return Verdict.SHARE
    return Verdict.HIT if is_fresh(status, expires, now) else Verdict.EXPIRED


def expires_at(now: datetime, expiry_hours: int) -> datetime:
    return now + timedelta(hours=max(0, expiry_hours))


def is_fresh(status: SnapshotStatus, expires: datetime, now: datetime) -> bool:
    """A cached image may be answered: it is Cached and not yet expired."""
    return status is SnapshotStatus.CACHED and expires > now


def is_expired(status: SnapshotStatus, expires: datetime, now: datetime) -> bool:
    """Past its expiry and no render under way: gone for its reader (GET answers 404
    ``snapshot_expired``) even before the Reaper removes it."""
    return status in (SnapshotStatus.CACHED, SnapshotStatus.FAILED) and expires <= now


def url_ttl_sec(default_ttl_sec: int, expires: datetime, now: datetime) -> int:
    """A presigned url lives ``default_ttl_sec`` but never past the snapshot (at least 1 s)."""
    left = int((expires - now).total_seconds())
    return max(1, min(default_ttl_sec, left))


def quote_frame(frame_rate: int, cfg: PricingConfig) -> pricing.PriceQuote:
    """The price of rendering one frame of a project at ``frame_rate`` (module docstring);
    :class:`ValueError` for an unknown frame rate."""
    return pricing.quote(
        quality=QUALITY,
        resolution=RESOLUTION,
        duration_sec=1 / frame_rate,
        frame_rate=frame_rate,
        price_type=PRICE_TYPE,
        support_flatrender=False,
        discount_percent=0.0,
        cfg=cfg,
    )
