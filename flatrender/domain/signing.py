"""Node protocol v1 signatures (DESIGN §4, fixed): pure functions shared by daemon and agent.

secret  = hex(HMAC-SHA256(node_master_key, str(node_id))), used as UTF-8 bytes
header  = "t=<unix seconds>,v1=<hex HMAC-SHA256(secret, '<t>.<METHOD>.<path>.<sha256(body)>')>"

The header is parsed strictly: exactly one ``t`` (ASCII digits, at most :data:`MAX_T_DIGITS`)
and one ``v1`` (64 lowercase hex digits), nothing else. Whatever else a client sends is a
malformed header, never an exception: a 5,000-digit ``t`` cannot reach float arithmetic.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import re
import time
from collections.abc import Callable
from uuid import UUID

import attrs

HEADER = "X-Node-Signature"

# Unix seconds have 10 digits until the year 2286; 12 leave room and keep every value an exact
# float, so the skew check below is plain arithmetic.
MAX_T_DIGITS = 12
# Longer than any well-formed header ("t=" 12 digits ",v1=" 64 hex digits, with spaces):
# anything past it is refused before it is split.
MAX_HEADER_LENGTH = 128
_T = re.compile(rf"[0-9]{{1,{MAX_T_DIGITS}}}")
_V1 = re.compile(r"[0-9a-f]{64}")


@attrs.frozen
class Signed:
    """A well-formed header: the signer's unix time and the hex HMAC it claims."""

    t: int
    v1: str


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


class Signer:
    """Signs one node's requests, never with the same ``(t, v1)`` twice.

    Two identical requests signed within one second (a report retried at once, two equal
    heartbeats) would carry the same signature, which the daemon refuses as ``replayed``. The
    later one is dated a second on instead: well within any skew, and neither the body nor the
    header's form changes. Only signatures dated this second or later are kept (no earlier ``t``
    is ever chosen again), so the memory is what the node signs within about a second.
    """

    __slots__ = ("_secret", "_clock", "_sent")

    def __init__(self, secret: str, clock: Callable[[], float] = time.time) -> None:
        self._secret = secret
        self._clock = clock
        self._sent: dict[int, set[str]] = {}

    def header(self, method: str, path: str, body: bytes) -> str:
        now = int(self._clock())
        for old in [t for t in self._sent if t < now]:
            del self._sent[old]
        t = now
        while True:
            v1 = signature(self._secret, t, method, path, body)
            used = self._sent.setdefault(t, set())
            if v1 not in used:
                used.add(v1)
                return f"t={t},v1={v1}"
            t += 1


def parse(value: str) -> Signed | None:
    """The header's ``t`` and ``v1``, or None when it is malformed in any way: too long, a
    part that is empty or not ``key=value``, a key other than ``t`` and ``v1``, either key
    missing or repeated, ``t`` not 1..12 ASCII digits, ``v1`` not 64 lowercase hex digits."""
    if len(value) > MAX_HEADER_LENGTH:
        return None
    fields: dict[str, str] = {}
    for part in value.split(","):
        key, sep, text = part.strip().partition("=")
        if not sep or key not in ("t", "v1") or key in fields:
            return None
        fields[key] = text
    t, v1 = fields.get("t"), fields.get("v1")
    if t is None or v1 is None or not _T.fullmatch(t) or not _V1.fullmatch(v1):
        return None
    return Signed(int(t), v1)


def verify_signed(
    secret: str, signed: Signed, method: str, path: str, body: bytes, now: float, max_skew: float
) -> bool:
    """True when ``signed`` signs exactly this request and its time is within ``max_skew``."""
    if abs(now - signed.t) > max_skew:
        return False
    expected = signature(secret, signed.t, method, path, body)
    return hmac.compare_digest(expected.encode(), signed.v1.encode())


def verify(
    secret: str, header: str, method: str, path: str, body: bytes, now: float, max_skew: float
) -> bool:
    """True when the header signs exactly this request and its time is within ``max_skew``."""
    signed = parse(header)
    return signed is not None and verify_signed(secret, signed, method, path, body, now, max_skew)
