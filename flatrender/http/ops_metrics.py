"""The daemon's Prometheus collector: reads, at scrape time, what the actors already keep.

Nothing here runs on a hot path. A scrape reads the supervisors' statistics (actors by kind and
state, mailbox depths), the progress hub's and the scheduler's counters, the counters the actors
bump (:class:`flatrender.metrics.Counters`), the pool's size and the store's error count; jobs
by step and nodes by status come from one grouped query (:meth:`DaemonCollector.refresh`,
bounded: it counts active jobs through their partial index and the registered nodes).
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Iterator

import trio
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from flatrender.actors.supervisor import SupervisorStatistics
from flatrender.http.common import AppState

log = logging.getLogger("flatrender.http")

# Jobs in each active step and nodes in each status, in one round trip.
COUNTS = """
SELECT 'job' AS kind, step AS key, count(*) AS n FROM render_jobs
WHERE step NOT IN ('Completed', 'Failed', 'Cancelled') GROUP BY step
UNION ALL
SELECT 'node', status, count(*) FROM nodes GROUP BY status
"""
COUNTS_SEC = 2.0


class DaemonCollector(Collector):
    def __init__(self, app_state: AppState) -> None:
        self.app_state = app_state
        self._jobs: dict[str, int] | None = None
        self._nodes: dict[str, int] | None = None

    async def refresh(self) -> None:
        """Read jobs by step and nodes by status; left out of the scrape when the database
        does not answer within ``COUNTS_SEC``."""
        self._jobs = self._nodes = None
        rows = None
        with trio.move_on_after(COUNTS_SEC):
            try:
                rows = await self.app_state.db.fetch(COUNTS)
            except Exception as e:  # a scrape reports what it can, never a 500
                log.debug("metrics: job and node counts unavailable: %s", e)
        if rows is None:
            return
        jobs: dict[str, int] = {}
        nodes: dict[str, int] = {}
        for r in rows:
            (jobs if r["kind"] == "job" else nodes)[r["key"]] = int(r["n"])
        self._jobs, self._nodes = jobs, nodes

    def collect(self) -> Iterator[Metric]:
        yield from self._actors()
        yield from self._counts()
        yield from self._pool()
        store_errors = getattr(self.app_state.store, "errors", None)
        if store_errors is not None:
            yield CounterMetricFamily(
                "flatrender_s3_errors",
                "Object storage calls that failed (unreachable, refused), not counting a "
                "missing object.",
                value=store_errors,
            )

    def _actors(self) -> Iterator[Metric]:
        system = self.app_state.actors
        if system is None:
            return
        by_kind = {
            "service": system.root.statistics(),
            "node": system.fleet.statistics(),
            "job": system.jobs.statistics(),
        }
        actors = GaugeMetricFamily(
            "flatrender_actors", "Supervised actors by kind and state.", labels=["kind", "state"]
        )
        depth = GaugeMetricFamily(
            "flatrender_mailbox_depth_max",
            "The most messages waiting in one actor's inbox, by kind.",
            labels=["kind"],
        )
        restarts = GaugeMetricFamily(
            "flatrender_actor_restarts",
            "Restarts of the actors now supervised, by kind.",
            labels=["kind"],
        )
        for kind, stats in by_kind.items():
            for child_state, n in _states(stats).items():
                actors.add_metric([kind, child_state], n)
            children = stats.children.values()
            depth.add_metric([kind], max((c.queued for c in children), default=0))
            restarts.add_metric([kind], sum(c.restarts for c in children))
        yield actors
        yield depth
        yield restarts

        counters = system.counters
        yield CounterMetricFamily(
            "flatrender_heartbeats", "Heartbeats answered.", value=counters.heartbeats
        )
        yield CounterMetricFamily(
            "flatrender_frame_reports", "Frame reports served.", value=counters.frame_reports
        )
        yield CounterMetricFamily(
            "flatrender_crash_reports", "AfterFX crashes recorded.", value=counters.crash_reports
        )
        dispatch = counters.dispatch
        histogram = HistogramMetricFamily(
            "flatrender_dispatch_latency_seconds",
            "From a range ready to its RenderFrames delivered in a heartbeat answer.",
        )
        histogram.add_metric([], [(le, float(n)) for le, n in dispatch.cumulative()], dispatch.sum)
        yield histogram

        sched = system.scheduler.stats
        yield GaugeMetricFamily(
            "flatrender_scheduler_waiting",
            "Work items the last scheduling round left unmatched.",
            value=sched.waiting,
        )
        yield CounterMetricFamily(
            "flatrender_dispatched",
            "Work handed to nodes by the scheduler.",
            value=sched.dispatched,
        )

        hub = system.hub.statistics()
        yield GaugeMetricFamily(
            "flatrender_websocket_watchers",
            "Live progress subscribers (WebSocket).",
            value=hub.subscribers,
        )
        yield CounterMetricFamily(
            "flatrender_websocket_drops",
            "Subscribers dropped for being too slow (closed 1013).",
            value=hub.dropped,
        )
        yield CounterMetricFamily(
            "flatrender_progress_delivered",
            "Progress messages handed to subscribers.",
            value=hub.delivered,
        )

    def _counts(self) -> Iterator[Metric]:
        for name, doc, label, counts in (
            ("flatrender_jobs", "Jobs in each active step.", "step", self._jobs),
            ("flatrender_nodes", "Registered nodes in each status.", "status", self._nodes),
        ):
            if counts is None:
                continue
            family = GaugeMetricFamily(name, doc, labels=[label])
            for key, n in sorted(counts.items()):
                family.add_metric([key], n)
            yield family

    def _pool(self) -> Iterator[Metric]:
        pool = getattr(getattr(self.app_state.db, "pool", None), "_asyncpg_pool", None)
        if pool is None:
            return
        size, idle = pool.get_size(), pool.get_idle_size()
        family = GaugeMetricFamily(
            "flatrender_db_pool_connections",
            "Database pool connections, in use and idle.",
            labels=["state"],
        )
        family.add_metric(["in_use"], size - idle)
        family.add_metric(["idle"], idle)
        yield family
        yield GaugeMetricFamily(
            "flatrender_db_pool_max", "The pool's maximum size.", value=pool.get_max_size()
        )


def _states(stats: SupervisorStatistics) -> dict[str, int]:
    counted = Counter(c.state.value for c in stats.children.values())
    counted.setdefault("running", 0)
    return dict(counted)
