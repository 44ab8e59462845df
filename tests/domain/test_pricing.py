"""Price, discount, tip, cancel refund, extension, queue order and retention (DESIGN §6)."""

import math

import attrs
import pytest
from hypothesis import given
from hypothesis import strategies as st

from flatrender.config import ExportsConfig, PricingConfig
from flatrender.domain.pricing import (
    PriceQuote,
    cancel_refund,
    discount_percent_for,
    extension_price,
    priority_queue,
    queue_rank,
    quote,
    retention_days,
)

CFG = PricingConfig()
PRICE_TYPES = ["Free", "Preview", "Cash", "Plan", "Snapshot", "Reseller"]


def price(**kw: object) -> PriceQuote:
    args: dict[str, object] = {
        "quality": "Medium",
        "resolution": "FullHD",
        "duration_sec": 10.0,
        "frame_rate": 30,
        "price_type": "Cash",
        "support_flatrender": False,
        "discount_percent": 0.0,
        "cfg": CFG,
    }
    args.update(kw)
    return quote(**args)  # type: ignore[arg-type]


def test_base_is_per_second_at_medium_fullhd_cash() -> None:
    q = price()
    assert q == PriceQuote(100, 100, 0, 0, q.breakdown)
    assert q.breakdown["base_exact_minor"] == 100.0


def test_quality_and_resolution_factors_multiply() -> None:
    assert price(quality="High", resolution="FourK").base_minor == 375  # 100 × 1.5 × 2.5
    assert price(quality="Low", resolution="HD").base_minor == 38  # 37.5 rounds half-up


@pytest.mark.parametrize(("frame_rate", "base"), [(24, 100), (25, 100), (30, 100), (60, 150)])
def test_fps60_factor_applies_only_at_60_fps(frame_rate: int, base: int) -> None:
    assert price(frame_rate=frame_rate).base_minor == base


@pytest.mark.parametrize(
    ("price_type", "base"),
    [("Cash", 100), ("Plan", 100), ("Reseller", 80), ("Preview", 25), ("Free", 0), ("Snapshot", 0)],
)
def test_price_type_factor(price_type: str, base: int) -> None:
    assert price(price_type=price_type).base_minor == base


def test_base_rounds_half_up_in_decimal_not_binary_arithmetic() -> None:
    cfg = attrs.evolve(CFG, base_per_second_minor=3, quality_factor={"Medium": 2.5})
    # 3 × 1.4 × 2.5 is 10.5 exactly; in binary floating point it is 10.499999999999998.
    assert price(duration_sec=1.4, cfg=cfg).base_minor == 11
    assert price(duration_sec=0.25).base_minor == 3  # 2.5 → 3


def test_discount_applies_to_base_only_and_tip_is_added() -> None:
    q = price(discount_percent=50.0, support_flatrender=True)
    assert (q.base_minor, q.discount_minor, q.tip_minor, q.total_minor) == (100, 50, 100, 150)


def test_discount_rounds_half_up() -> None:
    assert price(duration_sec=1.5, discount_percent=10.0).discount_minor == 2  # 15 × 10% = 1.5


def test_full_discount_leaves_only_the_tip() -> None:
    assert (
        price(discount_percent=100.0, support_flatrender=True).total_minor == CFG.support_tip_minor
    )


def test_free_job_with_support_costs_the_tip() -> None:
    assert price(price_type="Free", support_flatrender=True).total_minor == 100


def test_price_is_never_negative_even_with_negative_configuration() -> None:
    cfg = attrs.evolve(CFG, price_type_factor={"Cash": -1.0}, support_tip_minor=-50)
    q = price(cfg=cfg, support_flatrender=True)
    assert (q.base_minor, q.tip_minor, q.total_minor) == (0, 0, 0)


@pytest.mark.parametrize(
    "bad",
    [
        {"quality": "Ultra"},
        {"resolution": "EightK"},
        {"price_type": "Gift"},
        {"frame_rate": 50},
        {"duration_sec": -1.0},
        {"duration_sec": math.inf},
        {"discount_percent": -1.0},
        {"discount_percent": 100.5},
        {"discount_percent": math.nan},
    ],
)
def test_bad_input_raises_value_error(bad: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        price(**bad)


@given(
    quality=st.sampled_from(["Low", "Medium", "High", "Full", "Lossless"]),
    resolution=st.sampled_from(["HD", "FullHD", "TwoK", "FourK"]),
    duration=st.floats(min_value=0, max_value=3600, allow_nan=False),
    frame_rate=st.sampled_from([24, 25, 30, 60]),
    price_type=st.sampled_from(PRICE_TYPES),
    support=st.booleans(),
    discount=st.floats(min_value=0, max_value=100),
)
def test_quote_parts_always_add_up(
    quality: str,
    resolution: str,
    duration: float,
    frame_rate: int,
    price_type: str,
    support: bool,
    discount: float,
) -> None:
    q = quote(
        quality=quality,
        resolution=resolution,
        duration_sec=duration,
        frame_rate=frame_rate,
        price_type=price_type,
        support_flatrender=support,
        discount_percent=discount,
        cfg=CFG,
    )
    assert 0 <= q.discount_minor <= q.base_minor
    assert q.total_minor == q.base_minor - q.discount_minor + q.tip_minor >= 0
    assert abs(q.base_minor - q.breakdown["base_exact_minor"]) <= 0.5 + 1e-6


def test_discount_code_known_unknown_and_exact() -> None:
    cfg = attrs.evolve(CFG, discount_codes={"WELCOME": 10.0, "BIG": 150.0, "NEG": -5.0})
    assert discount_percent_for("WELCOME", cfg) == 10.0
    assert discount_percent_for("NOPE", cfg) is None
    # Redemptions are stored under the code as typed: a looser match would allow two redemptions.
    assert discount_percent_for("welcome", cfg) is None
    assert discount_percent_for(" WELCOME", cfg) is None


def test_discount_code_percentage_is_clamped_to_0_100() -> None:
    cfg = attrs.evolve(CFG, discount_codes={"BIG": 150.0, "NEG": -5.0})
    assert discount_percent_for("BIG", cfg) == 100.0
    assert discount_percent_for("NEG", cfg) == 0.0


@pytest.mark.parametrize(
    ("paid", "total", "rendered", "refund"),
    [
        (1000, 100, 0, 1000),  # nothing rendered: full refund
        (1000, 100, 100, 0),  # everything rendered: nothing back
        (1000, 100, 25, 750),
        (100, 3, 1, 66),  # 66.67 rounds down
        (1000, 100, -5, 1000),  # clamped
        (1000, 100, 500, 0),  # clamped
        (1000, 0, 0, 1000),  # no frames at all
        (0, 100, 10, 0),
    ],
)
def test_cancel_refund_is_the_unrendered_share_rounded_down(
    paid: int, total: int, rendered: int, refund: int
) -> None:
    assert cancel_refund(paid, total, rendered) == refund


def test_cancel_refund_refuses_negative_payment() -> None:
    with pytest.raises(ValueError):
        cancel_refund(-1, 10, 0)


@given(
    paid=st.integers(min_value=0, max_value=10**9),
    total=st.integers(min_value=1, max_value=10**6),
    data=st.data(),
)
def test_cancel_refund_never_exceeds_payment_and_falls_with_progress(
    paid: int, total: int, data: st.DataObject
) -> None:
    a = data.draw(st.integers(min_value=0, max_value=total))
    b = data.draw(st.integers(min_value=a, max_value=total))
    assert paid >= cancel_refund(paid, total, a) >= cancel_refund(paid, total, b) >= 0


def test_extension_price_is_per_day() -> None:
    assert extension_price(3, CFG) == 15
    assert extension_price(0, CFG) == 0
    with pytest.raises(ValueError):
        extension_price(-1, CFG)


@pytest.mark.parametrize("price_type", PRICE_TYPES)
def test_priority_queue_is_the_price_type_name(price_type: str) -> None:
    assert priority_queue(price_type) == price_type


def test_priority_queue_rejects_unknown_price_type() -> None:
    with pytest.raises(ValueError):
        priority_queue("Gift")


def test_queue_rank_follows_design_order() -> None:
    ranks = {p: queue_rank(priority_queue(p)) for p in PRICE_TYPES}
    assert ranks["Snapshot"] < ranks["Plan"] == ranks["Cash"] < ranks["Reseller"]
    assert ranks["Reseller"] < ranks["Preview"] < ranks["Free"]
    assert ranks == {"Snapshot": 0, "Plan": 1, "Cash": 1, "Reseller": 2, "Preview": 3, "Free": 4}
    with pytest.raises(ValueError):
        queue_rank("VIP")


def test_retention_days_by_price_type_with_default() -> None:
    cfg = ExportsConfig()
    assert retention_days("Free", cfg) == 3
    assert retention_days("Reseller", cfg) == 90
    assert retention_days("Snapshot", cfg) == cfg.default_retention_days


def test_fractional_retention_rounds_up() -> None:
    assert retention_days("Cash", ExportsConfig(retention_days={"Cash": 2.2})) == 3
