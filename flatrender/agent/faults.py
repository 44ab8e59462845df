"""Fault injection for the simulated node (pure): which ranges crash where, which frames are slow.

A :class:`FaultPlanner` draws from its own :class:`random.Random`, seeded from ``--seed`` and the
node's name, so a run with a seed injects the same faults in the same order every time, whatever
the other nodes in the process do. It never reads a clock: ``--die-after`` is applied by the node.
"""

from __future__ import annotations

import random

import attrs


def _probability(_: object, attribute: attrs.Attribute[float], value: float) -> None:
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"{attribute.name} must be within 0..1, got {value}")


@attrs.frozen
class FaultSettings:
    """``crash_rate``: probability that AE crashes once inside a range; ``slow_frame_rate``:
    probability that a frame takes ``slow_frame_factor`` times the normal frame time."""

    crash_rate: float = attrs.field(default=0.0, validator=_probability)
    slow_frame_rate: float = attrs.field(default=0.0, validator=_probability)
    slow_frame_factor: float = attrs.field(default=10.0)

    @slow_frame_factor.validator
    def _check_factor(self, attribute: attrs.Attribute[float], value: float) -> None:
        if value < 1.0:
            raise ValueError(f"slow_frame_factor must be >= 1, got {value}")


@attrs.frozen
class RangePlan:
    """The faults of one attempt at a range: AE crashes while rendering ``crash_frame`` (so the
    last frame it finished is ``crash_frame - 1``), and ``slow_frames`` take longer."""

    crash_frame: int | None = None
    slow_frames: frozenset[int] = frozenset()
    slow_factor: float = 1.0

    def frame_time(self, frame: int, base: float) -> float:
        return base * self.slow_factor if frame in self.slow_frames else base

    def without_crash(self) -> RangePlan:
        """The plan after AE was reset: one crash per range attempt is enough for a simulation."""
        return attrs.evolve(self, crash_frame=None)


NO_FAULTS = RangePlan()


class FaultPlanner:
    """Deterministic per node and seed (``seed=None``: random); one plan per range attempt."""

    def __init__(self, settings: FaultSettings, seed: int | None, node_name: str) -> None:
        self.settings = settings
        self._rng = random.Random(None if seed is None else f"{seed}:{node_name}")

    def plan_range(self, start_frame: int, end_frame: int) -> RangePlan:
        """Faults for frames ``start_frame..end_frame`` (inclusive); draws a fixed number of
        values per frame so later ranges do not depend on which faults were enabled."""
        if end_frame < start_frame:
            raise ValueError(f"bad frame range {start_frame}..{end_frame}")
        s = self.settings
        crashes = self._rng.random() < s.crash_rate
        crash_frame = self._rng.randint(start_frame, end_frame)
        slow = frozenset(
            n for n in range(start_frame, end_frame + 1) if self._rng.random() < s.slow_frame_rate
        )
        return RangePlan(
            crash_frame=crash_frame if crashes else None,
            slow_frames=slow,
            slow_factor=s.slow_frame_factor,
        )
