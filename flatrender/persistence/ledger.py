"""The money ledger: append-only entries in integer minor units; a balance is their sum.

Every change to an account takes the account's row lock first, so a balance check and the
entry it justifies are one atomic step even under concurrent requests.
"""

from __future__ import annotations

from uuid import UUID

from flatrender.persistence.db import Connection, Database

ENSURE_ACCOUNT = "INSERT INTO accounts (user_id) VALUES ($1) ON CONFLICT DO NOTHING"
LOCK_ACCOUNT = "SELECT user_id FROM accounts WHERE user_id = $1 FOR UPDATE"
BALANCE = "SELECT COALESCE(sum(amount_minor), 0)::bigint FROM ledger_entries WHERE user_id = $1"
APPEND = """
INSERT INTO ledger_entries (user_id, kind, amount_minor, job_id, export_id, note)
VALUES ($1, $2, $3, $4, $5, $6)
"""


async def lock_account(conn: Connection, user_id: UUID) -> int:
    """Create the account if new, lock it for this transaction, and return its balance."""
    await conn.execute(ENSURE_ACCOUNT, user_id)
    await conn.execute(LOCK_ACCOUNT, user_id)
    return int(await conn.fetchval(BALANCE, user_id))


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


async def credit(db: Database, user_id: UUID, amount_minor: int, note: str = "") -> int:
    """Add money to an account; returns the new balance."""
    async with db.transaction() as conn:
        before = await lock_account(conn, user_id)
        await append(conn, user_id, "credit", amount_minor, note=note)
    return before + amount_minor
