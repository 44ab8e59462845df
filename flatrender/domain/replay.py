"""Replay protection for node signatures (DESIGN §4, fixed): a signature ``(t, v1)`` the daemon
accepted from a node is refused as ``replayed`` for as long as it could still verify.

Pure and synchronous (the caller passes the time), so checking and remembering a signature is
one step no other request can interleave with: of two identical requests in flight, one passes.

Time. A signature verifies while ``|now - t| <= window`` in wall-clock unix seconds, so an entry
is kept, and forgotten, by that same clock (the caller passes the ``now`` it verified with): it
is dropped only once ``t < now - window``, when the skew check refuses it anyway. Expiry by a
monotonic clock would drift from that check whenever the wall clock is stepped. The window can
change on reload; entries are kept for the longest window seen, so a longer one never revives a
forgotten signature. Nor does a wall clock stepped back: the guard's ``now`` never goes back (the
latest one it was given), and a signature dated before what it still remembers (``t < now -
window``) is refused as :attr:`Admission.TOO_OLD`, since it may be one it has forgotten.

Restarts. The memory starts empty with the process (a restart, a fail-over to another daemon), so
the guard also refuses as ``TOO_OLD`` every signature dated before its own creation
(``started_at``, floored to the second): requests captured, or in flight, before the restart
cannot be replayed after it. A node signs each request with its current time, so what it sends
after the restart passes (a node whose clock lags the daemon's by ``d`` seconds is refused for
the first ``d`` seconds, and its client signs again on its next attempt).

Memory. Only verified signatures are remembered, so only a holder of a node's secret adds
entries, and each one lives at most ``2 × window`` (``t`` may lie up to ``window`` ahead).
Two caps bound the total whatever the signers do: :attr:`ReplayGuard.per_node` entries per node
(a node past it is refused until its oldest ones expire: a render node sends one heartbeat in
5 s and a few frame reports a second at most, 10,000 in 300 s is 33 a second), and
:attr:`ReplayGuard.total` entries for the daemon, reached only when a hundred nodes flood at
once. An entry costs ~90 bytes (a 60-bit int of ``v1`` in a set, two list slots; measured with
tracemalloc), so the default caps hold the guard under ~90 MiB; a fleet of 3,500 nodes beating
every 5 s keeps ~210,000 entries (~19 MiB), at ~4 µs per ``admit``. Two different signatures
sharing the first 60 bits of ``v1`` (one chance in 2^60 per pair) cost the second one a retry,
never an acceptance.
"""

from __future__ import annotations

import enum
import math
from uuid import UUID

import attrs

from flatrender.domain.signing import Signed

# Bits of v1 remembered: plenty to tell signatures apart, in the smallest int that holds them.
_KEY_HEX_DIGITS = 15


class Admission(enum.Enum):
    ADMITTED = "admitted"  # remembered: the same signature is now refused
    REPLAYED = "replayed"  # accepted before, within the window
    TOO_OLD = "too_old"  # dated before the guard started, or before what it still remembers
    NODE_FULL = "node_full"  # this node signed more than its share within the window
    FULL = "full"  # the daemon remembers as many signatures as it will


@attrs.define(eq=False)
class _Share:
    """One node's count of remembered signatures (shared by its entries, so an entry holds a
    pointer rather than its own copy of the node id)."""

    node_id: UUID
    count: int = 0


@attrs.define(eq=False)
class _Second:
    """The signatures remembered whose ``t`` is one given second, and their signers."""

    keys: list[int] = attrs.Factory(list)
    shares: list[_Share] = attrs.Factory(list)


@attrs.define
class ReplayGuard:
    """Signatures accepted within the window; ``admit`` is the only entry point.

    ``started_at``: the wall-clock unix time the guard was created (its memory begins there)."""

    started_at: float
    per_node: int = 10_000
    total: int = 1_000_000
    _seen: set[int] = attrs.field(init=False, factory=set)
    _seconds: dict[int, _Second] = attrs.field(init=False, factory=dict)
    _shares: dict[UUID, _Share] = attrs.field(init=False, factory=dict)
    _horizon: float = attrs.field(init=False, default=0.0)  # the longest window seen
    _now: float = attrs.field(init=False, default=-math.inf)  # the latest now given
    _pruned_at: int | None = attrs.field(init=False, default=None)

    def __len__(self) -> int:
        return len(self._seen)

    def remembered_by(self, node_id: UUID) -> int:
        share = self._shares.get(node_id)
        return 0 if share is None else share.count

    def admit(self, node_id: UUID, signed: Signed, now: float, window: float) -> Admission:
        """Remember ``signed`` from ``node_id`` unless it was accepted before or a cap is
        reached. Call only with a signature that verified at ``now`` within ``window``."""
        self._horizon = max(self._horizon, window)
        now = self._now = max(self._now, now)
        self._prune(now)
        if signed.t < math.floor(self.started_at) or signed.t < now - self._horizon:
            return Admission.TOO_OLD
        key = int(signed.v1[:_KEY_HEX_DIGITS], 16)
        if key in self._seen:
            return Admission.REPLAYED
        share = self._shares.get(node_id)
        if share is not None and share.count >= self.per_node:
            return Admission.NODE_FULL
        if len(self._seen) >= self.total:
            return Admission.FULL
        if share is None:
            share = self._shares[node_id] = _Share(node_id)
        second = self._seconds.get(signed.t)
        if second is None:
            second = self._seconds[signed.t] = _Second()
        second.keys.append(key)
        second.shares.append(share)
        share.count += 1
        self._seen.add(key)
        return Admission.ADMITTED

    def _prune(self, now: float) -> None:
        """Forget the seconds no signature of which can verify any more (at most once per
        second of ``now``: a scan of at most ``2 × window + 1`` seconds)."""
        this_second = math.floor(now)
        if this_second == self._pruned_at:
            return
        self._pruned_at = this_second
        cutoff = now - self._horizon
        for t in [t for t in self._seconds if t < cutoff]:
            second = self._seconds.pop(t)
            self._seen.difference_update(second.keys)
            for share in second.shares:
                share.count -= 1
                if share.count == 0:
                    del self._shares[share.node_id]
