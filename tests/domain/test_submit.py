"""The decisions of a render submit, without I/O."""

import pytest

from flatrender.domain.submit import (
    RenderOptions,
    chosen_frame_rate,
    frame_plan,
    given,
    option_errors,
)


def fields(options: RenderOptions) -> list[str]:
    return [e["field"] for e in option_errors(options)]


def test_defaults_are_valid() -> None:
    assert option_errors(RenderOptions()) == []


@pytest.mark.parametrize("rate", [24, 25, 30, 60])
def test_each_contract_frame_rate_is_accepted(rate: int) -> None:
    assert option_errors(RenderOptions(frame_rate=rate)) == []


@pytest.mark.parametrize("rate", [0, 23, 29, 50, 120, -30])
def test_other_frame_rates_are_refused(rate: int) -> None:
    assert fields(RenderOptions(frame_rate=rate)) == ["$.frame_rate"]


def test_60_fps_flag_conflicting_with_an_explicit_rate_is_refused() -> None:
    assert fields(RenderOptions(frame_rate=30, is_60_fps=True)) == ["$.is_60_fps"]


@pytest.mark.parametrize(
    "options",
    [
        RenderOptions(frame_rate=60, is_60_fps=True),
        RenderOptions(is_60_fps=True),
        RenderOptions(frame_rate=60, is_60_fps=False),
        RenderOptions(frame_rate=25, is_60_fps=False),
    ],
)
def test_60_fps_flag_agreeing_or_false_is_accepted(options: RenderOptions) -> None:
    assert option_errors(options) == []


def test_unknown_price_type_is_refused() -> None:
    errors = option_errors(RenderOptions(price_type="Gold"))
    assert [e["field"] for e in errors] == ["$.price_type"]


# Snapshot passes this check: it is refused with 403 by domain.entitlements.may_submit.
@pytest.mark.parametrize("price_type", ["Free", "Preview", "Cash", "Plan", "Reseller", "Snapshot"])
def test_contract_price_types_pass_the_option_check(price_type: str) -> None:
    assert option_errors(RenderOptions(price_type=price_type)) == []


def test_overlong_region_and_code_are_refused() -> None:
    options = RenderOptions(preferred_region="r" * 65, discount_code="c" * 65)
    assert fields(options) == ["$.preferred_region", "$.discount_code"]


def test_all_mistakes_are_reported_at_once() -> None:
    options = RenderOptions(frame_rate=29, price_type="Gold")
    assert fields(options) == ["$.frame_rate", "$.price_type"]


def test_frame_rate_explicit_then_flag_then_the_projects_own() -> None:
    assert chosen_frame_rate(RenderOptions(frame_rate=24), 30) == 24
    assert chosen_frame_rate(RenderOptions(is_60_fps=True), 30) == 60
    assert chosen_frame_rate(RenderOptions(is_60_fps=False), 25) == 25
    assert chosen_frame_rate(RenderOptions(), 30) == 30


def test_at_the_projects_own_rate_the_job_renders_the_projects_frames() -> None:
    # total_frames wins over duration × rate: the catalog's frame count is exact.
    plan = frame_plan(30, project_frame_rate=30, project_total_frames=301, duration_sec=10.0)
    assert (plan.frame_count, plan.end_frame) == (301, 300)
    assert plan.duration_sec == pytest.approx(301 / 30)


def test_at_another_rate_the_duration_is_resampled() -> None:
    plan = frame_plan(60, project_frame_rate=30, project_total_frames=300, duration_sec=10.0)
    assert (plan.frame_rate, plan.frame_count, plan.end_frame) == (60, 600, 599)
    assert plan.duration_sec == 10.0


def test_resampling_rounds_half_up() -> None:
    plan = frame_plan(25, project_frame_rate=30, project_total_frames=75, duration_sec=2.5)
    assert plan.frame_count == 63  # 62.5 frames


def test_a_tiny_project_still_renders_one_frame() -> None:
    plan = frame_plan(24, project_frame_rate=30, project_total_frames=1, duration_sec=0.01)
    assert (plan.frame_count, plan.end_frame) == (1, 0)


@pytest.mark.parametrize(
    ("raw", "expected"), [(None, None), ("", None), ("  ", None), (" A ", " A ")]
)
def test_blank_optional_text_means_not_given(raw: str | None, expected: str | None) -> None:
    assert given(raw) == expected
