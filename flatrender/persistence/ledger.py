"""The money ledger: append-only entries in integer minor units; a balance is their sum.

Every change to an account takes the account's row lock first, so a balance check and the
entry it justifies are one atomic step even under concurrent requests. The account row also
holds its entitlements (DESIGN §5); a submit reads them under the same lock, so a concurrent
change of entitlements is ordered before or after the submit, never in between.
"""

from __future__ import annotations

from uuid import UUID

import attrs

from flatrender.persistence.db import Connection, Database

ENSURE_ACCOUNT = "INSERT INTO accounts (user_id) VALUES ($1) ON CONFLICT DO NOTHING"
LOCK_ACCOUNT = "SELECT entitlements FROM accounts WHERE user_id = $1 FOR UPDATE"
BALANCE = "SELECT COALESCE(sum(amount_minor), 0)::bigint FROM ledger_entries WHERE user_id = $1"
APPEND = """
INSERT INTO ledger_entries (user_id, kind, amount_minor, job_id, export_id, note)
VALUES ($1, $2, $3, $4, $5, $6)
"""


@attrs.frozen
class Account:
    user_id: UUID
    balance_minor: int
    entitlements: tuple[str, ...]  # sorted


async def lock(conn: Connection, user_id: UUID) -> Account:
    """Create the account if new, lock it for this transaction, and return it."""
    await conn.execute(ENSURE_ACCOUNT, user_id)
    held = await conn.fetchval(LOCK_ACCOUNT, user_id)
    balance_minor = int(await conn.fetchval(BALANCE, user_id))
    return Account(user_id, balance_minor, tuple(sorted(held)))


async def lock_account(conn: Connection, user_id: UUID) -> int:
    """Create the account if new, lock it for this transaction, and return its balance."""
    return (await lock(conn, user_id)).balance_minor


async def append(
    conn: Connection,
    user_id: UUID,
    kind: str,
    amount_minor: int,
    *,
    job_id: UUID | None = None,
    export_id: UUID | None = None,
    note: str = "",
) -> None:
    """Append one entry inside the caller's transaction (after :func:`lock_account`)."""
    await conn.execute(APPEND, user_id, kind, amount_minor, job_id, export_id, note)


async def balance(db: Database, user_id: UUID) -> int:
    return int(await db.fetchval(BALANCE, user_id))


ACCOUNT = f"""
SELECT ({BALANCE}) AS balance_minor,
    COALESCE((SELECT entitlements FROM accounts WHERE user_id = $1), '{{}}') AS entitlements
"""


async def account(db: Database, user_id: UUID) -> Account:
    """The account as it stands (an unknown user has an empty one; nothing is created)."""
    record = await db.fetchrow(ACCOUNT, user_id)
    return Account(user_id, int(record["balance_minor"]), tuple(sorted(record["entitlements"])))


async def credit(db: Database, user_id: UUID, amount_minor: int, note: str = "") -> int:
    """Add money to an account; returns the new balance."""
    return (await credit_account(db, user_id, amount_minor, note)).balance_minor


async def credit_account(db: Database, user_id: UUID, amount_minor: int, note: str = "") -> Account:
    """Add money to an account; returns the account after the credit."""
    async with db.transaction() as conn:
        before = await lock(conn, user_id)
        await append(conn, user_id, "credit", amount_minor, note=note)
    return attrs.evolve(before, balance_minor=before.balance_minor + amount_minor)


SET_ENTITLEMENTS = "UPDATE accounts SET entitlements = $2 WHERE user_id = $1"


async def set_entitlements(db: Database, user_id: UUID, entitlements: tuple[str, ...]) -> Account:
    """Replace the account's entitlements (creating the account if new) under its row lock;
    ``entitlements`` must be known, sorted and distinct (see ``domain.entitlements``)."""
    async with db.transaction() as conn:
        before = await lock(conn, user_id)
        await conn.execute(SET_ENTITLEMENTS, user_id, list(entitlements))
    return attrs.evolve(before, entitlements=entitlements)
