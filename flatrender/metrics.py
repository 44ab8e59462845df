"""What the actors count for ``GET /metrics``, at the cost of an integer increment.

One :class:`Counters` per actor system (never process-wide: tests run several daemons in one
process). Actors bump its plain fields on their hot paths (a heartbeat, a frame report); the
collector of :mod:`flatrender.http.ops` reads them when Prometheus scrapes. Nothing here
imports the actors or prometheus_client: the counting side stays free of both.
"""

from __future__ import annotations

import bisect

import attrs

# Seconds from a range ready to its RenderFrames delivered in a heartbeat answer: a heartbeat
# interval (5 s) or two when the fleet is idle, minutes when every node is busy.
DISPATCH_BUCKETS = (0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0, 600.0)


class LatencyHistogram:
    """A fixed-bucket histogram: ``counts[i]`` observations at most ``bounds[i]`` (and above
    the previous bound), the last slot for those above every bound."""

    __slots__ = ("bounds", "counts", "sum")

    def __init__(self, bounds: tuple[float, ...] = DISPATCH_BUCKETS) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)
        self.sum = 0.0

    def observe(self, seconds: float) -> None:
        self.counts[bisect.bisect_left(self.bounds, seconds)] += 1
        self.sum += seconds

    def cumulative(self) -> list[tuple[str, int]]:
        """``(le, count)`` pairs as Prometheus buckets want them, ending with ``+Inf``."""
        out, total = [], 0
        for bound, count in zip((*map(str, self.bounds), "+Inf"), self.counts, strict=True):
            total += count
            out.append((bound, total))
        return out


@attrs.define(slots=True)
class Counters:
    """Monotonic counts since the actor system started (Prometheus notices a restart)."""

    heartbeats: int = 0  # heartbeats a node actor answered
    frame_reports: int = 0  # frame reports a job actor accepted
    crash_reports: int = 0  # AfterFX crashes recorded (a repeated report is not counted again)
    dispatch: LatencyHistogram = attrs.Factory(LatencyHistogram)
