"""The verdict on a paid export extension: due exports are refused first, then the balance."""

from datetime import UTC, datetime, timedelta

import pytest

from flatrender.domain.extension import ExtensionVerdict, decide_extension

NOW = datetime(2030, 6, 1, 12, 0, tzinfo=UTC)
SECOND = timedelta(seconds=1)


@pytest.mark.parametrize(
    ("due", "balance", "price", "verdict"),
    [
        (NOW + SECOND, 10, 10, ExtensionVerdict.ALLOWED),  # exactly covered
        (NOW + SECOND, 0, 0, ExtensionVerdict.ALLOWED),  # free
        (NOW + SECOND, 9, 10, ExtensionVerdict.INSUFFICIENT_BALANCE),
        (NOW + SECOND, -1, 0, ExtensionVerdict.INSUFFICIENT_BALANCE),  # in debt, even for free
        (NOW, 100, 10, ExtensionVerdict.ALREADY_DUE),  # due now: the Reaper may take it
        (NOW - SECOND, 100, 10, ExtensionVerdict.ALREADY_DUE),
        (NOW - SECOND, 0, 10, ExtensionVerdict.ALREADY_DUE),  # due wins over the balance
    ],
)
def test_extension_verdict(
    due: datetime, balance: int, price: int, verdict: ExtensionVerdict
) -> None:
    assert (
        decide_extension(auto_delete_date=due, now=NOW, balance_minor=balance, price_minor=price)
        is verdict
    )
