"""Paid extension of an export (DESIGN §6: "extending an export is charged per day").

- **Days**: 1..365 per request (:data:`MIN_DAYS`, :data:`MAX_DAYS`); the HTTP layer refuses
  others as invalid input before anything is read.
- **Price**: :func:`flatrender.domain.pricing.extension_price` (per day, never negative).
- **Verdict**: an export already due (``auto_delete_date`` at or before now) can no longer be
  extended, whatever the balance: the Reaper may be deleting it. Otherwise the owner's balance
  must cover the price. Both are checked under the account's and the export's locks.
"""

from __future__ import annotations

import enum
from datetime import datetime

MIN_DAYS, MAX_DAYS = 1, 365


class ExtensionVerdict(enum.Enum):
    ALLOWED = "allowed"
    ALREADY_DUE = "already_due"
    INSUFFICIENT_BALANCE = "insufficient_balance"


def decide_extension(
    *, auto_delete_date: datetime, now: datetime, balance_minor: int, price_minor: int
) -> ExtensionVerdict:
    """Whether an export due at ``auto_delete_date`` may be extended at ``now`` for
    ``price_minor`` by an owner whose balance is ``balance_minor``."""
    if auto_delete_date <= now:
        return ExtensionVerdict.ALREADY_DUE
    if balance_minor < price_minor:
        return ExtensionVerdict.INSUFFICIENT_BALANCE
    return ExtensionVerdict.ALLOWED
