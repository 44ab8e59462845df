"""Staged rollout of a node software update: the plan and the halt rule, as pure functions.

A rollout request puts nodes in the update's queue; the nodes queued together (plus whatever was
still pending or, for an update already in its queue, the whole running wave) form one *wave*.
The wave is updated in stages: the first stage is ``ceil(stage1_fraction × n)`` nodes (at least
one), each next stage twice the previous one, until every node of the wave is done. A stage
advances when every node sent so far is settled (``Confirmed`` or ``Failed``) and
``observe_sec`` has passed since the last confirmation; after the last stage that same condition
ends the wave. Within a stage, queued nodes are taken in node-id order among those that look
ready (idle, active, accepting); a busy node simply waits for a later tick while others go first.

A node confirms when its ``nodes`` row reports ``node_agent_version`` equal to the update file's
stem (:func:`version_stem`) after the command was sent; a queued node that already runs that
version is confirmed without a command (nothing to install).

The rollout halts by itself, with the reason recorded, when

- a sent node did not confirm within ``confirm_timeout_sec`` (an update that does not boot sends
  no crash reports: silence is the symptom), or
- the updated nodes crash more often than the rest: their crashes per node-hour since their own
  confirmation exceed ``max(crash_rate_factor × rest_rate, min_crash_rate_per_hour)`` and they
  crashed at least ``min_crashes`` times; ``rest_rate`` is the crashes per node-hour of the
  wave's not-yet-updated nodes (``Queued`` or ``Sent``) since the first confirmation.

Nothing here reads a clock or does I/O: ``now`` and every fact are arguments.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Sequence
from datetime import datetime
from uuid import UUID

import attrs

_COMPOUND_SUFFIXES = (".tar.gz", ".tar.xz", ".tar.bz2")


class RolloutStatus(enum.Enum):
    QUEUED = "Queued"
    SENT = "Sent"
    CONFIRMED = "Confirmed"
    FAILED = "Failed"
    HALTED = "Halted"


S = RolloutStatus


@attrs.frozen
class RolloutPolicy:
    stage1_fraction: float = 0.1
    observe_sec: float = 300.0
    crash_rate_factor: float = 2.0
    min_crash_rate_per_hour: float = 1.0
    min_crashes: int = 2
    confirm_timeout_sec: float = 1800.0


@attrs.frozen
class Target:
    """One node's rollout row and what its ``nodes`` row says now."""

    node_id: UUID
    status: RolloutStatus
    in_wave: bool
    sent_at: datetime | None = None
    confirmed_at: datetime | None = None
    node_version: str = ""
    # Idle, active, accepting and not due for maintenance: an UpdateSoftware would be taken.
    node_ready: bool = False


@attrs.frozen
class Crash:
    node_id: UUID
    at: datetime


@attrs.frozen
class Decision:
    """What to do this round; every transition is a compare-and-set on the row's status."""

    confirm: tuple[UUID, ...] = ()  # Sent -> Confirmed: the node reports the new version
    adopt: tuple[UUID, ...] = ()  # Queued -> Confirmed: it already runs it, nothing to send
    timed_out: tuple[UUID, ...] = ()  # Sent -> Failed: no confirmation within the timeout
    send: tuple[UUID, ...] = ()  # Queued -> Sent once the node accepted UpdateSoftware
    halt: str | None = None  # Queued -> Halted, the reason recorded, the update leaves its queue
    done: bool = False  # every stage settled and observed: the update leaves its queue


@attrs.frozen
class CrashRates:
    updated_nodes: int
    updated_crashes: int
    updated_hours: float
    rest_nodes: int
    rest_crashes: int
    rest_hours: float

    @property
    def updated_rate(self) -> float:
        return _rate(self.updated_crashes, self.updated_hours)

    @property
    def rest_rate(self) -> float:
        return _rate(self.rest_crashes, self.rest_hours)


def _rate(crashes: int, hours: float) -> float:
    if hours > 0:
        return crashes / hours
    return math.inf if crashes else 0.0


def version_stem(file_name: str) -> str:
    """The agent version a node reports once it installed ``file_name``.

    The file name without its extension (``agent-2.0.0.zip`` -> ``agent-2.0.0``); an all-digit
    suffix is part of the version (``agent-2.0.1`` stays). The simulated agent applies the same
    rule (``flatrender.agent.commands.UpdateSoftware.agent_version``).
    """
    name = file_name.rsplit("/", 1)[-1]
    for suffix in _COMPOUND_SUFFIXES:
        if name.endswith(suffix):
            return name[: -len(suffix)]
    stem, dot, ext = name.rpartition(".")
    return stem if dot and stem and any(c.isalpha() for c in ext) else name


def stage_bounds(n: int, stage1_fraction: float) -> list[int]:
    """Cumulative node counts at the end of each stage: 10 nodes at 10 % -> [1, 3, 7, 10]."""
    if n <= 0:
        return []
    # Rounded first so that 0.1 × 30 (3.0000000000000004 in binary) is a stage of 3, not 4.
    size = min(n, max(1, math.ceil(round(stage1_fraction * n, 9))))
    bounds = []
    total = 0
    while total < n:
        total = min(n, total + size)
        bounds.append(total)
        size *= 2
    return bounds


def wave_of(targets: Sequence[Target]) -> list[Target]:
    """The rows of the current wave; a halted row is no longer part of any plan."""
    return [t for t in targets if t.in_wave and t.status is not S.HALTED]


def observation_start(targets: Sequence[Target]) -> datetime | None:
    """The first confirmation of the wave: crashes before it never matter to the halt rule."""
    times = [t.confirmed_at for t in wave_of(targets) if t.status is S.CONFIRMED and t.confirmed_at]
    return min(times, default=None)


def crash_rates(wave: Sequence[Target], crashes: Sequence[Crash], now: datetime) -> CrashRates:
    """Crashes per node-hour: updated nodes since their own confirmation, the rest since the
    first confirmation of the wave (the same period)."""
    confirmed = {
        t.node_id: t.confirmed_at
        for t in wave
        if t.status is S.CONFIRMED and t.confirmed_at is not None
    }
    rest = {t.node_id for t in wave if t.status in (S.QUEUED, S.SENT)}
    if not confirmed:
        return CrashRates(0, 0, 0.0, len(rest), 0, 0.0)
    start = min(confirmed.values())
    updated_hours = sum(max(0.0, (now - at).total_seconds()) for at in confirmed.values()) / 3600
    updated_crashes = sum(
        1 for c in crashes if c.node_id in confirmed and confirmed[c.node_id] <= c.at <= now
    )
    rest_crashes = sum(1 for c in crashes if c.node_id in rest and start <= c.at <= now)
    rest_hours = len(rest) * max(0.0, (now - start).total_seconds()) / 3600
    return CrashRates(
        len(confirmed), updated_crashes, updated_hours, len(rest), rest_crashes, rest_hours
    )


def crash_halt_reason(rates: CrashRates, policy: RolloutPolicy) -> str | None:
    """The halt rule on crash rates; the reason states both rates and what they come from."""
    threshold = max(rates.rest_rate * policy.crash_rate_factor, policy.min_crash_rate_per_hour)
    if rates.updated_crashes < policy.min_crashes or rates.updated_rate <= threshold:
        return None
    return (
        f"updated nodes crash {rates.updated_rate:.2f} times per node-hour "
        f"({rates.updated_crashes} crashes on {rates.updated_nodes} updated nodes over "
        f"{rates.updated_hours:.2f} node-hours), above max({policy.crash_rate_factor:g} x "
        f"{rates.rest_rate:.2f} of the not-yet-updated nodes ({rates.rest_crashes} crashes on "
        f"{rates.rest_nodes} nodes over {rates.rest_hours:.2f} node-hours), "
        f"{policy.min_crash_rate_per_hour:g})"
    )


def timeout_halt_reason(stem: str, timed_out: Sequence[UUID], policy: RolloutPolicy) -> str:
    nodes = ", ".join(str(node_id) for node_id in timed_out)
    return (
        f"{len(timed_out)} node(s) did not report agent version {stem!r} within "
        f"{policy.confirm_timeout_sec:g} s of the UpdateSoftware command: {nodes}"
    )


def send_quota(wave: Sequence[Target], now: datetime, policy: RolloutPolicy) -> int | None:
    """How many more queued nodes may be sent now; None once every stage is settled and
    observed (the wave is done)."""
    dispatched = sum(1 for t in wave if t.status in (S.SENT, S.CONFIRMED, S.FAILED))
    in_flight = any(t.status is S.SENT for t in wave)
    last = max(
        (t.confirmed_at for t in wave if t.status is S.CONFIRMED and t.confirmed_at), default=None
    )
    observed = last is None or (now - last).total_seconds() >= policy.observe_sec
    for bound in stage_bounds(len(wave), policy.stage1_fraction):
        if dispatched < bound:
            return bound - dispatched  # fill the current stage up
        if dispatched == bound and (in_flight or not observed):
            return 0  # the stage is out: wait until it is settled and observed
    return None


def decide(
    stem: str,
    targets: Sequence[Target],
    crashes: Sequence[Crash],
    now: datetime,
    policy: RolloutPolicy,
    *,
    active: bool,
) -> Decision:
    """One round of an update's rollout. ``active``: the update is in its queue; otherwise
    (halted) only the nodes still in flight are followed: confirmed or, after the timeout, failed.
    """
    confirm = tuple(t.node_id for t in targets if t.status is S.SENT and t.node_version == stem)
    timed_out = tuple(
        t.node_id
        for t in targets
        if t.status is S.SENT
        and t.node_id not in confirm
        and t.sent_at is not None
        and (now - t.sent_at).total_seconds() >= policy.confirm_timeout_sec
    )
    if not active:
        return Decision(confirm=confirm, timed_out=timed_out)
    adopt = tuple(
        t.node_id for t in wave_of(targets) if t.status is S.QUEUED and t.node_version == stem
    )
    wave = [_after(t, confirm + adopt, timed_out, now) for t in wave_of(targets)]
    reason: str | None
    if timed_out:
        reason = timeout_halt_reason(stem, timed_out, policy)
    else:
        reason = crash_halt_reason(crash_rates(wave, crashes, now), policy)
    if reason is not None:
        return Decision(confirm=confirm, adopt=adopt, timed_out=timed_out, halt=reason)
    quota = send_quota(wave, now, policy)
    if quota is None:
        return Decision(confirm=confirm, adopt=adopt, done=True)
    ready = [t.node_id for t in wave if t.status is S.QUEUED and t.node_ready]
    return Decision(confirm=confirm, adopt=adopt, send=tuple(ready[:quota]))


def _after(
    target: Target, confirmed: tuple[UUID, ...], failed: tuple[UUID, ...], now: datetime
) -> Target:
    if target.node_id in confirmed:
        return attrs.evolve(target, status=S.CONFIRMED, confirmed_at=now)
    if target.node_id in failed:
        return attrs.evolve(target, status=S.FAILED)
    return target
