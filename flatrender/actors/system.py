"""The actor system: the root supervisor and the long-lived actors under it (DESIGN §1).

Order matters and is explicit: the health writer first (node actors feed it), the progress hub
(job and node actors publish to it), then the fleet (node actors rebuilt from PostgreSQL), the
jobs (job actors rebuilt and resumed), the scheduler that pairs their work, the software rollout
(it talks to node actors), then the reaper and the notifier (job-end webhooks from the outbox).
Each is a PERMANENT child of the root supervisor; an actor object survives its own restarts, so
handles held elsewhere stay valid.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import datetime
from uuid import UUID

import trio

from flatrender.actors import job
from flatrender.actors.fleet import Fleet
from flatrender.actors.health_writer import HealthWriter
from flatrender.actors.hub import ProgressHub
from flatrender.actors.job import JobDeps
from flatrender.actors.jobs import JobSystem, JobUnknown
from flatrender.actors.mailbox import ActorUnavailable, Reply
from flatrender.actors.merger import Merger
from flatrender.actors.node import Liveness, NodeDeps
from flatrender.actors.notifier import Notifier
from flatrender.actors.reaper import (
    Reaper,
    health_tasks,
    snapshot_deadline_tasks,
    snapshot_tasks,
)
from flatrender.actors.retention import retention_tasks
from flatrender.actors.rollout import RolloutActor
from flatrender.actors.scheduler import Scheduler
from flatrender.actors.supervisor import ChildSpec, RestartPolicy, Supervisor
from flatrender.clock import utc_now
from flatrender.config import Config
from flatrender.domain.node_status import NodePolicy
from flatrender.metrics import Counters
from flatrender.persistence.db import Database
from flatrender.storage import ObjectStore

log = logging.getLogger("flatrender.actors")

# Actors that write on their own schedule rather than for a request: stopped once shutdown
# begins, so that what in-flight requests commit is all that is written (DESIGN §8). Their
# wake() calls stay harmless (an event set); the next start resumes their work.
SELF_DRIVEN = ("scheduler", "rollout", "reaper", "notifier")


def node_policy(config: Config) -> NodePolicy:
    nodes = config.nodes
    return NodePolicy(
        heartbeat_interval_sec=nodes.heartbeat_interval_sec,
        busy_heartbeat_interval_sec=nodes.busy_heartbeat_interval_sec,
        heartbeat_timeout_sec=float(nodes.heartbeat_timeout_sec),
        max_consecutive_failures=nodes.max_consecutive_failures,
        max_heartbeats_per_sec=nodes.max_heartbeats_per_sec,
    )


class ActorSystem:
    """Owns every actor; ``await nursery.start(system.run)`` returns once all are ready."""

    def __init__(
        self,
        db: Database,
        store: ObjectStore,
        config: Callable[[], Config],
        *,
        clock: Callable[[], datetime] = utc_now,
        policy: RestartPolicy | None = None,
    ) -> None:
        self.db = db
        self.config = config
        self.root = Supervisor(policy, name="root")
        # What the actors count for GET /metrics (per system: tests run several side by side).
        self.counters = Counters()
        self.health = HealthWriter(db)
        self.hub = ProgressHub()
        self.liveness = Liveness()
        self.fleet = Fleet(
            NodeDeps(
                db=db,
                samples=self.health,
                policy=lambda: node_policy(config()),
                clock=clock,
                on_lost=self._node_lost,
                on_dropped=lambda node_id, work: self.jobs.work_dropped(node_id, work),
                work_waiting=lambda node_id: self.scheduler.work_waiting_for(node_id),
                fleet_size=lambda: self.fleet.size(),
                node_idle=lambda: self.scheduler.wake(),
                status_changed=self.hub.node_changed,
                counters=self.counters,
                liveness=self.liveness,
            )
        )
        self.merger = Merger(store)
        self.jobs = JobSystem(
            JobDeps(
                db=db,
                store=store,
                fleet=self.fleet,
                merger=self.merger,
                config=config,
                clock=clock,
                wake_scheduler=lambda: self.scheduler.wake(),
                notification_written=lambda: self.notifier.wake(),
                progress=self.hub.publish,
                counters=self.counters,
            )
        )
        self.scheduler = Scheduler(db, self.jobs, config)
        self.rollout = RolloutActor(db, self.fleet, store, config, clock)
        self.notifier = Notifier(db, config, now=clock)
        self.reaper = Reaper(
            [
                *health_tasks(db, config().nodes.health_retention_days),
                *retention_tasks(db, store, config),
                *snapshot_tasks(db, store),
                *snapshot_deadline_tasks(
                    db, self.abort_job, lambda: config().snapshots.render_timeout_sec
                ),
            ],
            now=clock,
            interval_sec=60.0,
        )
        self._scope = trio.CancelScope()
        self._done = trio.Event()

    async def run(
        self, *, task_status: trio.TaskStatus[ActorSystem] = trio.TASK_STATUS_IGNORED
    ) -> None:
        try:
            with self._scope:
                async with trio.open_nursery() as nursery:
                    await nursery.start(self.root.run)
                    await self.root.start_child(ChildSpec("health-writer", self.health.run))
                    await self.root.start_child(ChildSpec("progress-hub", self.hub.run))
                    await self.root.start_child(ChildSpec("fleet", self.fleet.run))
                    await self.root.start_child(ChildSpec("jobs", self.jobs.run))
                    await self.root.start_child(ChildSpec("scheduler", self.scheduler.run))
                    await self.root.start_child(ChildSpec("rollout", self.rollout.run))
                    await self.root.start_child(ChildSpec("reaper", self.reaper.run))
                    await self.root.start_child(ChildSpec("notifier", self.notifier.run))
                    self.ready()
                    task_status.started(self)
        finally:
            self._done.set()

    async def _node_lost(self, node_id: UUID, reason: str) -> None:
        log.warning("node %s lost its work (%s): requeueing its ranges", node_id, reason)
        await self.jobs.node_lost(node_id)

    async def abort_job(self, job_id: UUID, message: str) -> bool:
        """Fail a job through its actor (started first if it is not running); False when the
        actor cannot take it now (restarting, busy, or the job ended meanwhile)."""

        def make(reply: Reply) -> job.Abort:
            return job.Abort(message, reply)

        try:
            try:
                await self.jobs.call(job_id, make)
            except JobUnknown:
                await self.jobs.start_job(job_id)
                await self.jobs.call(job_id, make)
        except (JobUnknown, ActorUnavailable) as e:
            log.warning("could not abort job %s now: %s", job_id, e)
            return False
        return True

    def ready(self) -> None:
        """Every actor is up (and again once the daemon serves): every node's timeout counts
        from now, whatever its row's last heartbeat or its actor's start (DESIGN §8)."""
        self.liveness.ready()

    def freeze(self) -> None:
        """Shutdown began: no node deadline fires any more, so nothing is declared Offline or
        requeued on the way out; what in-flight requests commit still is (DESIGN §8)."""
        self.liveness.freeze()
        log.info("shutdown: node deadlines frozen")

    async def quiesce(self) -> None:
        """Stop the self-driven actors (no dispatch, reaping, rollout or webhook from now on);
        node and job actors keep serving the requests in flight."""
        for child_id in SELF_DRIVEN:
            if self.root.has_child(child_id):
                await self.root.stop_child(child_id)

    async def drain(self) -> None:
        """Stop every actor; the health writer flushes what it holds on its way out."""
        self._scope.cancel()
        await self._done.wait()
        log.info("actor system stopped")
