"""Billing extension (DESIGN §5): balances and entitlements kept by the main app; service only.

Every answer is the account: ``{user_id, balance_minor, entitlements}``, entitlements sorted.
``PUT .../entitlements`` replaces the set: duplicates collapse, an unknown value is 422 naming
its position (``$.entitlements[i]``) and nothing changes.
"""

from __future__ import annotations

from typing import Any

import attrs
from quart import Blueprint

from flatrender.domain import entitlements as ent
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


@attrs.frozen
class EntitlementsIn:
    entitlements: list[str]


@bp.get("/v1/billing/accounts/<user_id>")
async def get_account(user_id: str) -> dict[str, Any]:
    require_service(caller())
    uid = path_uuid("user_id", user_id)
    return _account(await ledger.account(state().db, uid))


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
    account = await ledger.credit_account(state().db, uid, credit.amount_minor, "credit via API")
    return _account(account)


@bp.put("/v1/billing/accounts/<user_id>/entitlements")
async def put_entitlements(user_id: str) -> dict[str, Any]:
    require_service(caller())
    uid = path_uuid("user_id", user_id)
    given = (await body(EntitlementsIn)).entitlements
    wrong = ent.unknown(given)
    if wrong:
        message = f"must be one of {', '.join(ent.ENTITLEMENTS)}"
        errors = [{"field": f"$.entitlements[{i}]", "message": message} for i in wrong]
        raise unprocessable("unknown entitlements", errors)
    account = await ledger.set_entitlements(state().db, uid, ent.normalised(given))
    return _account(account)


def _account(account: ledger.Account) -> dict[str, Any]:
    return {
        "user_id": str(account.user_id),
        "balance_minor": account.balance_minor,
        "entitlements": list(account.entitlements),
    }
