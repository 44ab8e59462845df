"""Small helpers shared by tests (fixtures live in conftest.py)."""

from __future__ import annotations

from uuid import UUID

import attrs


@attrs.frozen
class Tokens:
    secret: str
    user_id: UUID
    user: str
    other_user_id: UUID
    other_user: str
    admin: str
    service: str


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}
