"""Node protocol v1 signatures (DESIGN §4, fixed): pure functions shared by daemon and agent.

secret  = hex(HMAC-SHA256(node_master_key, str(node_id))), used as UTF-8 bytes
header  = "t=<unix seconds>,v1=<hex HMAC-SHA256(secret, '<t>.<METHOD>.<path>.<sha256(body)>')>"
"""

from __future__ import annotations

import functools
import hashlib
import hmac
from uuid import UUID

HEADER = "X-Node-Signature"


# A pure function asked on every signed request: remembered for a fleet's worth of nodes (a
# changed master key is another key of the cache, so a SIGHUP reload takes effect at once).
@functools.lru_cache(maxsize=16_384)
def node_secret(node_master_key: str, node_id: UUID) -> str:
    return hmac.new(node_master_key.encode(), str(node_id).encode(), hashlib.sha256).hexdigest()


def signature(secret: str, timestamp: int, method: str, path: str, body: bytes) -> str:
    message = f"{timestamp}.{method.upper()}.{path}.{hashlib.sha256(body).hexdigest()}"
    return hmac.new(secret.encode(), message.encode(), hashlib.sha256).hexdigest()


def sign(secret: str, timestamp: int, method: str, path: str, body: bytes) -> str:
    """The header value for one request; ``path`` without the query string."""
    return f"t={timestamp},v1={signature(secret, timestamp, method, path, body)}"


def parse_header(value: str) -> tuple[int, str] | None:
    """``(t, v1)`` from a header value, or None when it is malformed."""
    parts = dict(p.split("=", 1) for p in value.split(",") if "=" in p)
    try:
        return int(parts["t"]), parts["v1"]
    except (KeyError, ValueError):
        return None


def verify(
    secret: str, header: str, method: str, path: str, body: bytes, now: float, max_skew: float
) -> bool:
    """True when the header signs exactly this request and its time is within ``max_skew``."""
    parsed = parse_header(header)
    if parsed is None:
        return False
    timestamp, supplied = parsed
    if abs(now - timestamp) > max_skew:
        return False
    expected = signature(secret, timestamp, method, path, body)
    return hmac.compare_digest(expected.encode(), supplied.encode())
