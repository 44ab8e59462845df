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


def signed_headers(
    secret: str, method: str, path: str, raw: bytes, t: int | None = None
) -> dict[str, str]:
    """Headers of a node protocol v1 request (DESIGN §4)."""
    import time

    from flatrender.domain.signing import HEADER, sign

    stamp = int(time.time()) if t is None else t
    return {HEADER: sign(secret, stamp, method, path, raw), "Content-Type": "application/json"}
