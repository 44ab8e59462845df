"""Money rules of a render job (DESIGN §6), as pure functions over integer minor units.

- **Price**: ``base = base_per_second_minor × duration_sec × quality_factor × resolution_factor
  × fps60_factor (only at 60 fps) × price_type_factor``, computed in decimal arithmetic and
  rounded half-up to whole minor units. A discount code takes a percentage off the *base* only
  (rounded half-up, never more than the base); the configured tip (``support_tip_minor``) is
  added when the user chose ``support_flatrender`` and is never discounted. No price is negative.
- **Cancel refund**: the share of the job's frames not yet rendered, rounded *down*, so the sum
  refunded can never exceed what was paid.
- **Queue order**: ``priority_queue`` is the price type's own name; Snapshot first (a person is
  waiting), then Plan and Cash together, then Reseller, Preview, Free.
- **Retention**: days an export is kept, by price type, with a default for the others.

Unknown quality, resolution, price type or frame rate raise :class:`ValueError`: the HTTP layer
validates the contract's enums before it asks for a price, so reaching one here is a bug.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from decimal import ROUND_HALF_UP, Decimal

import attrs

from flatrender.config import ExportsConfig, PricingConfig

FRAME_RATES = frozenset({24, 25, 30, 60})

# Lower is served first (DESIGN §6). Plan and Cash share a rank: within it, queued_at decides.
_QUEUE_RANK: Mapping[str, int] = {
    "Snapshot": 0,
    "Plan": 1,
    "Cash": 1,
    "Reseller": 2,
    "Preview": 3,
    "Free": 4,
}


@attrs.frozen
class PriceQuote:
    """What a job costs: ``total_minor = base_minor - discount_minor + tip_minor`` (≥ 0).

    ``breakdown`` holds the inputs that produced it (factors, unrounded base, discount percent),
    for the job's log and for support questions; it is not used to compute anything.
    """

    total_minor: int
    base_minor: int
    tip_minor: int
    discount_minor: int
    breakdown: dict[str, float]


def _dec(value: float) -> Decimal:
    # Through the shortest repr, so a configured 0.1 is exactly one tenth, not its binary ghost.
    return Decimal(repr(float(value)))


def _round_half_up(value: Decimal) -> int:
    return int(value.quantize(Decimal(1), rounding=ROUND_HALF_UP))


def _factor(table: Mapping[str, float], key: str, what: str) -> float:
    try:
        return float(table[key])
    except KeyError:
        raise ValueError(f"unknown {what} {key!r}") from None


def quote(
    *,
    quality: str,
    resolution: str,
    duration_sec: float,
    frame_rate: int,
    price_type: str,
    support_flatrender: bool,
    discount_percent: float,
    cfg: PricingConfig,
) -> PriceQuote:
    """The price of a render of ``duration_sec`` seconds of output (see the module rules).

    Raises :class:`ValueError` for an unknown quality, resolution, price type or frame rate, a
    negative or non-finite duration, or a discount outside 0–100 percent.
    """
    q = _factor(cfg.quality_factor, quality, "quality")
    r = _factor(cfg.resolution_factor, resolution, "resolution")
    p = _factor(cfg.price_type_factor, price_type, "price type")
    if frame_rate not in FRAME_RATES:
        raise ValueError(f"unknown frame rate {frame_rate!r}")
    if not math.isfinite(duration_sec) or duration_sec < 0:
        raise ValueError(f"duration_sec must be a finite number ≥ 0, got {duration_sec!r}")
    if not 0 <= discount_percent <= 100:  # also refuses NaN
        raise ValueError(f"discount_percent must be within 0–100, got {discount_percent!r}")
    fps = cfg.fps60_factor if frame_rate == 60 else 1.0

    exact = (
        Decimal(cfg.base_per_second_minor)
        * _dec(duration_sec)
        * _dec(q)
        * _dec(r)
        * _dec(fps)
        * _dec(p)
    )
    base = max(0, _round_half_up(exact))
    discount = min(base, max(0, _round_half_up(base * _dec(discount_percent) / 100)))
    tip = max(0, cfg.support_tip_minor) if support_flatrender else 0
    return PriceQuote(
        total_minor=max(0, base - discount + tip),
        base_minor=base,
        tip_minor=tip,
        discount_minor=discount,
        breakdown={
            "base_per_second_minor": float(cfg.base_per_second_minor),
            "duration_sec": float(duration_sec),
            "quality_factor": q,
            "resolution_factor": r,
            "fps_factor": fps,
            "price_type_factor": p,
            "base_exact_minor": float(exact),
            "discount_percent": float(discount_percent),
        },
    )


def discount_percent_for(code: str, cfg: PricingConfig) -> float | None:
    """The percentage a discount code takes off, clamped to 0–100; None for an unknown code.

    Codes match exactly (case and spaces count): a redemption is recorded under the code as
    typed, so a looser match would let one configured code be redeemed twice by one user.
    """
    percent = cfg.discount_codes.get(code)
    if percent is None:
        return None
    return min(100.0, max(0.0, float(percent)))


def cancel_refund(paid_minor: int, total_frames: int, rendered_frames: int) -> int:
    """Refund for a cancelled job: ``paid × unrendered / total``, rounded down.

    ``rendered_frames`` is clamped to ``0..total_frames``: nothing rendered refunds everything,
    everything rendered refunds nothing, and the refund never exceeds ``paid_minor``. A job with
    no frames at all is refunded in full. Raises :class:`ValueError` for a negative payment.
    """
    if paid_minor < 0:
        raise ValueError(f"paid_minor must be ≥ 0, got {paid_minor}")
    if total_frames <= 0:
        return paid_minor
    rendered = min(max(rendered_frames, 0), total_frames)
    return paid_minor * (total_frames - rendered) // total_frames


def extension_price(days: int, cfg: PricingConfig) -> int:
    """Price of keeping an export ``days`` more days; raises :class:`ValueError` below 0."""
    if days < 0:
        raise ValueError(f"days must be ≥ 0, got {days}")
    return days * max(0, cfg.export_extend_per_day_minor)


def priority_queue(price_type: str) -> str:
    """The queue a job of ``price_type`` waits in: the price type's name itself."""
    if price_type not in _QUEUE_RANK:
        raise ValueError(f"unknown price type {price_type!r}")
    return price_type


def queue_ranks() -> Mapping[str, int]:
    """Every queue with its position in the service order (what :func:`queue_rank` gives)."""
    return _QUEUE_RANK


def queue_rank(priority_queue: str) -> int:
    """Position of a queue in the service order, 0 first; :class:`ValueError` if unknown."""
    try:
        return _QUEUE_RANK[priority_queue]
    except KeyError:
        raise ValueError(f"unknown priority queue {priority_queue!r}") from None


def retention_days(price_type: str, cfg: ExportsConfig) -> int:
    """Days an export of a ``price_type`` job is kept before the Reaper deletes it.

    A fractional configured value is rounded up: an export is never kept shorter than configured.
    """
    days = cfg.retention_days.get(price_type, cfg.default_retention_days)
    return max(0, math.ceil(days))
