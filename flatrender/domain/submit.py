"""What a render submit decides before it is priced or written: frame rate, frames, price type.

Pure: no I/O, no clock, no configuration. Problems come back as ``{"field", "message"}``
entries (the shape of every 422), so a request learns all of its mistakes at once.
"""

from __future__ import annotations

import math

import attrs

from flatrender.domain.catalog import FRAME_RATES

Errors = list[dict[str, str]]

STEPS = ("Queued", "Preparing", "Rendering", "Merging", "Completed", "Failed", "Cancelled")
DEFAULT_PRICE_TYPE = "Cash"
# A snapshot renders one frame for a person who waits; it has its own endpoint and queue.
RENDER_PRICE_TYPES = ("Free", "Preview", "Cash", "Plan", "Reseller")
MAX_REGION = 64
MAX_DISCOUNT_CODE = 64


@attrs.frozen
class RenderOptions:
    """The choices of a ``RenderJobCreate`` body that need a decision (wire enums mapped)."""

    frame_rate: int | None = None
    is_60_fps: bool | None = None
    price_type: str = DEFAULT_PRICE_TYPE
    discount_code: str | None = None
    preferred_region: str | None = None


@attrs.frozen
class FramePlan:
    """The job renders frames ``0 .. frame_count - 1`` at ``frame_rate``."""

    frame_rate: int
    frame_count: int

    @property
    def end_frame(self) -> int:
        return self.frame_count - 1

    @property
    def duration_sec(self) -> float:
        return self.frame_count / self.frame_rate


def option_errors(options: RenderOptions) -> Errors:
    """Everything wrong with the options on their own (empty when valid)."""
    errors: Errors = []
    if options.frame_rate is not None and options.frame_rate not in FRAME_RATES:
        errors.append(_error("frame_rate", f"must be one of {', '.join(map(str, FRAME_RATES))}"))
    elif options.is_60_fps and options.frame_rate not in (None, 60):
        # is_60_fps true is another spelling of frame_rate 60 (DESIGN §6); false asks for nothing.
        errors.append(_error("is_60_fps", f"is true but frame_rate is {options.frame_rate}"))
    # Snapshot passes here: who may submit which price type is domain.entitlements' (a 403).
    if options.price_type not in (*RENDER_PRICE_TYPES, "Snapshot"):
        errors.append(_error("price_type", f"must be one of {', '.join(RENDER_PRICE_TYPES)}"))
    region = options.preferred_region
    if region is not None and len(region) > MAX_REGION:
        errors.append(_error("preferred_region", f"must be at most {MAX_REGION} characters"))
    code = options.discount_code
    if code is not None and len(code) > MAX_DISCOUNT_CODE:
        errors.append(_error("discount_code", f"must be at most {MAX_DISCOUNT_CODE} characters"))
    return errors


def chosen_frame_rate(options: RenderOptions, project_frame_rate: int) -> int:
    """``frame_rate`` if given, 60 for ``is_60_fps``, else the project's own rate."""
    if options.frame_rate is not None:
        return options.frame_rate
    if options.is_60_fps:
        return 60
    return project_frame_rate


def frame_plan(
    frame_rate: int, *, project_frame_rate: int, project_total_frames: int, duration_sec: float
) -> FramePlan:
    """At the project's own rate the job renders the project's frames; at another rate, the
    same duration resampled (rounded half up, at least one frame)."""
    if frame_rate == project_frame_rate:
        count = project_total_frames
    else:
        count = math.floor(duration_sec * frame_rate + 0.5)
    return FramePlan(frame_rate, max(count, 1))


def given(value: str | None) -> str | None:
    """Blank optional text (``""``, spaces) means "not given"; other text is kept as typed
    (a discount code is matched and redeemed exactly as typed, see ``pricing``)."""
    if value is None or not value.strip():
        return None
    return value


def _error(field: str, message: str) -> dict[str, str]:
    return {"field": f"$.{field}", "message": message}
