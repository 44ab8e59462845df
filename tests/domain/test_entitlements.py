"""The price-type decision of a render submit (DESIGN §5), every edge without I/O."""

from __future__ import annotations

import pytest

from flatrender.domain.entitlements import (
    ENTITLEMENTS,
    Submitter,
    may_submit,
    normalised,
    unknown,
)

USER = Submitter.USER
SERVICE = Submitter.SERVICE


@pytest.mark.parametrize("submitter", list(Submitter))
def test_cash_is_allowed_to_anyone_without_entitlements(submitter: Submitter) -> None:
    assert may_submit("Cash", (), submitter)


@pytest.mark.parametrize("price_type", ENTITLEMENTS)
def test_user_without_the_entitlement_is_refused(price_type: str) -> None:
    others = [e for e in ENTITLEMENTS if e != price_type]
    assert not may_submit(price_type, others, USER)


@pytest.mark.parametrize("price_type", ENTITLEMENTS)
def test_user_holding_the_entitlement_is_allowed(price_type: str) -> None:
    assert may_submit(price_type, {price_type}, USER)


@pytest.mark.parametrize("price_type", ENTITLEMENTS)
def test_service_may_submit_any_render_price_type_without_entitlements(price_type: str) -> None:
    assert may_submit(price_type, (), SERVICE)


@pytest.mark.parametrize("submitter", list(Submitter))
def test_snapshot_is_never_a_render_price_type(submitter: Submitter) -> None:
    assert not may_submit("Snapshot", ENTITLEMENTS, submitter)


@pytest.mark.parametrize("submitter", list(Submitter))
def test_unknown_price_type_is_refused(submitter: Submitter) -> None:
    assert not may_submit("Gold", ["Gold"], submitter)


def test_normalised_collapses_duplicates_and_sorts() -> None:
    assert normalised(["Preview", "Free", "Preview"]) == ("Free", "Preview")
    assert normalised([]) == ()


def test_unknown_names_the_positions_of_unknown_values() -> None:
    assert unknown(["Free", "Cash", "Plan", "gold", "Snapshot"]) == [1, 3, 4]
    assert unknown(ENTITLEMENTS) == []
