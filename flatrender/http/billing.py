"""Billing extension (DESIGN §5): balances read and credited by the main app; service only."""

from __future__ import annotations

from typing import Any
from uuid import UUID

import attrs
from quart import Blueprint

from flatrender.http.auth import require_service
from flatrender.http.common import body, caller, path_uuid, state
from flatrender.http.errors import unprocessable
from flatrender.persistence import ledger

bp = Blueprint("billing", __name__)

# A single credit above this is almost surely a unit mistake (major for minor units).
MAX_CREDIT_MINOR = 10**12


@attrs.frozen
class CreditIn:
    amount_minor: int


@bp.get("/v1/billing/accounts/<user_id>")
async def get_account(user_id: str) -> dict[str, Any]:
    require_service(caller())
    uid = path_uuid("user_id", user_id)
    return _account(uid, await ledger.balance(state().db, uid))


@bp.post("/v1/billing/accounts/<user_id>/credit")
async def credit_account(user_id: str) -> dict[str, Any]:
    require_service(caller())
    uid = path_uuid("user_id", user_id)
    credit = await body(CreditIn)
    if not 1 <= credit.amount_minor <= MAX_CREDIT_MINOR:
        raise unprocessable(
            "amount_minor is out of range",
            [{"field": "$.amount_minor", "message": f"must be between 1 and {MAX_CREDIT_MINOR}"}],
        )
    new_balance = await ledger.credit(state().db, uid, credit.amount_minor, note="credit via API")
    return _account(uid, new_balance)


def _account(user_id: UUID, balance_minor: int) -> dict[str, Any]:
    return {"user_id": str(user_id), "balance_minor": balance_minor}
