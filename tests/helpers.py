"""Small helpers shared by tests (fixtures live in conftest.py)."""

from __future__ import annotations

from uuid import UUID

import attrs

from flatrender.domain.signing import HEADER, Signer, sign


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


_signers: dict[str, Signer] = {}


def signed_headers(
    secret: str, method: str, path: str, raw: bytes, t: int | None = None
) -> dict[str, str]:
    """Headers of a node protocol v1 request (DESIGN §4): signed now, never twice alike (the
    daemon refuses a replayed signature), or at exactly ``t`` when given."""
    if t is None:
        header = _signers.setdefault(secret, Signer(secret)).header(method, path, raw)
    else:
        header = sign(secret, t, method, path, raw)
    return {HEADER: header, "Content-Type": "application/json"}
