"""The Scheduler: matches ready work to idle nodes (DESIGN §6), and sweeps lost work.

Each round reads what waits (Pending ranges of Rendering jobs, replicas to build) and which
nodes may take work, from PostgreSQL, where the job and node actors commit their state; the pure
``scheduling.match`` pairs them; each pair is offered to the job's actor, which hands the command
to the node's actor. Rounds run when woken (new work, a node freed) and at least every
``tick_sec``. It also finds ranges (and replica builds) still held by nodes that are Offline
(a missed message, an assignment committed just after the node was lost, a daemon restart)
and tells their jobs.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any
from uuid import UUID

import attrs
import trio

from flatrender.actors import job
from flatrender.actors.jobs import JobSystem, JobUnknown
from flatrender.actors.mailbox import MESSAGE_ERRORS, ActorUnavailable
from flatrender.config import Config
from flatrender.domain.pricing import queue_ranks
from flatrender.domain.scheduling import NodeCandidate, WorkItem, by_job, match, passed_over
from flatrender.persistence.db import UNAVAILABLE_ERRORS, Database, DatabaseUnavailable

log = logging.getLogger("flatrender.scheduler")
# Jobs offered their share of a round concurrently (each commits on its own connection).
OFFERS_AT_ONCE = 4
_SKIPPABLE: tuple[type[BaseException], ...] = (DatabaseUnavailable, *UNAVAILABLE_ERRORS)
# A job that cannot take an offer now, or whose actor refused it (its data): the next round
# offers again; the round and the scheduler go on.
_DECLINED: tuple[type[BaseException], ...] = (JobUnknown, ActorUnavailable, *MESSAGE_ERRORS)

# The queue order of ``scheduling.queue_key`` in SQL, so that a LIMIT keeps the head of the
# queue (an unknown queue sorts last; ``queue_key`` refuses it).
QUEUE_RANK_SQL = (
    "CASE j.priority_queue "
    + " ".join(f"WHEN '{queue}' THEN {rank}" for queue, rank in queue_ranks().items())
    + " ELSE 1000 END"
)
PENDING_RANGES = f"""
SELECT f.id AS frame_job_id, f.job_id, f.order_value, j.user_id, j.preferred_region,
       j.priority_queue, j.queued_at, p.ae_version, p.template_md5
FROM frame_jobs f
JOIN render_jobs j ON j.id = f.job_id
JOIN catalog_projects p ON p.saved_project_id = j.saved_project_id
WHERE f.status = 'Pending' AND j.step = 'Rendering'
ORDER BY {QUEUE_RANK_SQL}, j.queued_at, f.job_id, f.order_value
LIMIT 2000
"""
REPLICAS_WANTED = f"""
SELECT j.id AS job_id, j.user_id, j.preferred_region, j.priority_queue, j.queued_at,
       p.ae_version, p.template_md5
FROM render_jobs j JOIN catalog_projects p ON p.saved_project_id = j.saved_project_id
WHERE j.step = 'Preparing' AND j.replica_node_id IS NULL
ORDER BY {QUEUE_RANK_SQL}, j.queued_at, j.id
LIMIT 500
"""
IDLE_NODES = """
SELECT id, owner_user_id, region, available_ae_versions, current_ae_version,
       cached_template_md5s, priority, consecutive_failures
FROM nodes
WHERE status = 'Idle' AND is_active AND accepts_new_jobs
  AND (next_maintenance_at IS NULL OR next_maintenance_at > now())
"""
TRIMMABLE = """
SELECT f.job_id, max(f.end_frame - f.start_frame + 1 - f.frames_rendered) AS left_to_do
FROM frame_jobs f JOIN render_jobs j ON j.id = f.job_id
WHERE j.step = 'Rendering' AND f.status IN ('Assigned', 'Rendering') AND f.trim_tail_id IS NULL
  AND f.end_frame - f.start_frame + 1 - f.frames_rendered >= $1
GROUP BY f.job_id ORDER BY left_to_do DESC LIMIT $2
"""
HELD_BY_OFFLINE = """
SELECT f.job_id, f.node_id FROM frame_jobs f JOIN nodes n ON n.id = f.node_id
WHERE f.status IN ('Assigned', 'Rendering', 'Rendered') AND n.status = 'Offline'
UNION
SELECT j.id, j.replica_node_id FROM render_jobs j JOIN nodes n ON n.id = j.replica_node_id
WHERE j.step = 'Preparing' AND n.status = 'Offline'
"""


@attrs.define
class SchedulerStatistics:
    rounds: int = 0
    dispatched: int = 0
    refused: int = 0
    waiting: int = 0  # work items left unmatched in the last round
    trimmed: int = 0  # tails split off long ranges for late idle nodes


class Scheduler:
    def __init__(
        self,
        db: Database,
        jobs: JobSystem,
        config: Callable[[], Config],
        *,
        tick_sec: float = 0.5,
    ) -> None:
        self.db = db
        self.jobs = jobs
        self.config = config
        self.tick_sec = tick_sec
        self.stats = SchedulerStatistics()
        self._wake = trio.Event()
        self._passed_over: frozenset[UUID] = frozenset()

    def wake(self) -> None:
        self._wake.set()

    def work_waiting_for(self, node_id: UUID) -> bool:
        """True while work waits that this idle node may take: it should heartbeat sooner.

        An idle node that the last round passed over (no waiting item may run on it) is not
        told to hurry: only new work or a node of its kind freeing up changes that.
        """
        return self.stats.waiting > 0 and node_id not in self._passed_over

    async def run(
        self, *, task_status: trio.TaskStatus[Scheduler] = trio.TASK_STATUS_IGNORED
    ) -> None:
        task_status.started(self)
        while True:
            with trio.move_on_after(self.tick_sec):
                await self._wake.wait()
            self._wake = trio.Event()
            try:
                await self.round()
            except _SKIPPABLE as e:
                log.warning("scheduling round skipped, database unavailable: %s", e)
            except MESSAGE_ERRORS as e:
                log.error("scheduling round refused by the database: %s", e)

    async def round(self) -> int:
        """One matching round; returns how many pieces of work were handed to nodes."""
        self.stats.rounds += 1
        await self._sweep_offline()
        items, replicas = await self._work()
        nodes = [_candidate(r) for r in await self.db.fetch(IDLE_NODES)]
        pairs = match(items, nodes)
        dispatched = 0
        batches = by_job((item, node) for item, node in pairs if item.frame_job_id not in replicas)
        limiter = trio.CapacityLimiter(OFFERS_AT_ONCE)

        async def offer(job_id: UUID, batch: tuple[tuple[UUID, UUID], ...]) -> None:
            nonlocal dispatched
            async with limiter:
                taken = await self._offer_ranges(job_id, batch)
            dispatched += taken
            self.stats.refused += len(batch) - taken

        async def offer_replica(item: WorkItem, node_id: UUID) -> None:
            nonlocal dispatched
            async with limiter:
                taken = await self._offer(item, node_id, True)
            dispatched += taken
            self.stats.refused += not taken

        # Each job gets its share of the round in one message (one commit); jobs and nodes
        # are distinct across the offers, so they run side by side.
        async with trio.open_nursery() as nursery:
            for job_id, batch in batches.items():
                nursery.start_soon(offer, job_id, batch)
            for item, node in pairs:
                if item.frame_job_id in replicas:
                    nursery.start_soon(offer_replica, item, node.node_id)
        self.stats.dispatched += dispatched
        self.stats.waiting = len(items) - dispatched
        self._passed_over = passed_over(nodes, pairs)
        idle_left = len(nodes) - len(pairs)
        if idle_left > 0 and self.stats.waiting == 0 and await self._offer_tails(idle_left):
            self.wake()  # the tails are Pending now: the next round hands them out
        return dispatched

    async def _offer_tails(self, idle_nodes: int) -> int:
        """Late idle nodes take the unstarted tails of long ranges (DESIGN §6): a TrimRange to
        the holder, the tail queued. Returns how many tails were split off."""
        jobs_cfg = self.config().jobs
        smallest = 2 * max(jobs_cfg.trim_min_tail_frames, jobs_cfg.min_chunk_frames)
        trimmed = 0
        for r in await self.db.fetch(TRIMMABLE, smallest, idle_nodes):
            try:
                trimmed += bool(await self.jobs.call(r["job_id"], job.OfferTail))
            except _DECLINED:
                continue
        self.stats.trimmed += trimmed
        return trimmed

    async def _offer_ranges(self, job_id: UUID, batch: tuple[tuple[UUID, UUID], ...]) -> int:
        """Offer a job its ranges of the round; how many the nodes took."""
        try:
            taken = await self.jobs.call(job_id, lambda reply: job.AssignRanges(batch, reply))
        except _DECLINED:
            return 0
        return len(taken)

    async def _offer(self, item: WorkItem, node_id: UUID, replica: bool) -> bool:
        """Offer one pairing to the job's actor; False when the job or the node declined."""

        def make(reply: Any) -> job.AssignRange | job.AssignReplica:
            if replica:
                return job.AssignReplica(node_id, reply)
            return job.AssignRange(item.frame_job_id, node_id, reply)

        try:
            return bool(await self.jobs.call(item.job_id, make))
        except _DECLINED:
            return False

    async def _work(self) -> tuple[list[WorkItem], set[UUID]]:
        items = [
            WorkItem(
                job_id=r["job_id"],
                frame_job_id=r["frame_job_id"],
                owner_user_id=r["user_id"],
                preferred_region=r["preferred_region"],
                ae_version=r["ae_version"],
                template_md5=r["template_md5"],
                priority_queue=r["priority_queue"],
                queued_at=r["queued_at"],
                order_value=r["order_value"],
            )
            for r in await self.db.fetch(PENDING_RANGES)
        ]
        replicas: set[UUID] = set()
        for r in await self.db.fetch(REPLICAS_WANTED):
            # A replica build is one piece of work keyed by its job.
            replicas.add(r["job_id"])
            items.append(
                WorkItem(
                    job_id=r["job_id"],
                    frame_job_id=r["job_id"],
                    owner_user_id=r["user_id"],
                    preferred_region=r["preferred_region"],
                    ae_version=r["ae_version"],
                    template_md5=r["template_md5"],
                    priority_queue=r["priority_queue"],
                    queued_at=r["queued_at"],
                    order_value=-1,
                )
            )
        return items, replicas

    async def _sweep_offline(self) -> None:
        for r in await self.db.fetch(HELD_BY_OFFLINE):
            try:
                await self.jobs.call(
                    r["job_id"], lambda reply, n=r["node_id"]: job.NodeGone(n, reply)
                )
            except _DECLINED:
                continue


def _candidate(r: Any) -> NodeCandidate:
    versions = frozenset(r["available_ae_versions"]) | {r["current_ae_version"]}
    return NodeCandidate(
        node_id=r["id"],
        owner_user_id=r["owner_user_id"],
        region=r["region"],
        ae_versions=versions,
        cached_md5s=frozenset(r["cached_template_md5s"]),
        priority=r["priority"],
        recent_failures=r["consecutive_failures"],
    )
