"""Who may submit a render job at which price type (DESIGN §5), as a pure decision.

- **Entitlements** are the price types besides ``Cash`` an account holds: a subset of
  :data:`ENTITLEMENTS`, set by a service (the main app knows plans and resellers; we do not).
- **Users** (any JWT, admins included: they submit for their own account) may submit ``Cash``
  always and another render price type only if their account holds it.
- **Services** may submit any render price type on a user's behalf.
- **Snapshot** is never a render job's price type through ``/v1/renders``, whoever asks: it is
  the snapshot endpoint's own (one frame, first in the queue), and a render job carrying it would
  jump every queue. Snapshot jobs are made only by ``/v1/snapshots``.
"""

from __future__ import annotations

import enum
from collections.abc import Collection, Iterable

CASH = "Cash"
SNAPSHOT = "Snapshot"
# Sorted: the order accounts show them in.
ENTITLEMENTS = ("Free", "Plan", "Preview", "Reseller")


class Submitter(enum.Enum):
    """Who submits: a user (JWT) for their own account, or a trusted service."""

    USER = "user"
    SERVICE = "service"


def may_submit(price_type: str, entitlements: Collection[str], submitter: Submitter) -> bool:
    """Whether ``submitter`` may submit a render job at ``price_type`` for an account that holds
    ``entitlements``. Unknown price types are never allowed (the HTTP layer refuses them first)."""
    if price_type == SNAPSHOT:
        return False
    if price_type == CASH:
        return True
    if price_type not in ENTITLEMENTS:
        return False
    return submitter is Submitter.SERVICE or price_type in entitlements


def normalised(values: Iterable[str]) -> tuple[str, ...]:
    """A set of known entitlements in the order accounts show them (duplicates collapse)."""
    return tuple(sorted(set(values)))


def unknown(values: Iterable[str]) -> list[int]:
    """Positions of the values that are not entitlements (empty when all are known)."""
    return [i for i, value in enumerate(values) if value not in ENTITLEMENTS]
