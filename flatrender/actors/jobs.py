"""The job supervisor: one JobActor per non-terminal job, and the routing to them.

Job actors are TRANSIENT children: a job that reaches a terminal step ends its actor for good;
a crashed one is restarted from PostgreSQL. At start every non-terminal job gets its actor.
"""

from __future__ import annotations

import logging
from typing import Any
from uuid import UUID

import trio

from flatrender.actors import job, mailbox
from flatrender.actors.supervisor import (
    ChildSpec,
    ChildUnavailable,
    Restart,
    Supervisor,
    SupervisorStatistics,
)

log = logging.getLogger("flatrender.jobs")

RANGE_OWNERS = "SELECT id, job_id FROM frame_jobs WHERE id = ANY($1::uuid[])"
# Jobs with work on a node: open ranges, or the replica build of a Preparing job.
HOLDERS = """
SELECT job_id FROM frame_jobs
WHERE node_id = $1 AND status IN ('Assigned', 'Rendering', 'Rendered')
UNION
SELECT id FROM render_jobs WHERE replica_node_id = $1 AND step = 'Preparing'
"""
ACTIVE = """
SELECT id FROM render_jobs WHERE step NOT IN ('Completed', 'Failed', 'Cancelled') ORDER BY queued_at
"""


class JobUnknown(LookupError):
    """No actor for this job: it does not exist or is already terminal."""


class JobSystem:
    def __init__(self, deps: job.JobDeps) -> None:
        self.deps = deps
        self._supervisor: Supervisor | None = None

    async def run(
        self, *, task_status: trio.TaskStatus[JobSystem] = trio.TASK_STATUS_IGNORED
    ) -> None:
        supervisor = Supervisor(name="jobs")
        async with trio.open_nursery() as nursery:
            await nursery.start(supervisor.run)
            self._supervisor = supervisor
            ids = [r["id"] for r in await self.deps.db.fetch(ACTIVE)]
            for job_id in ids:
                await self._start(supervisor, job_id)
            log.info("job system up: %d active jobs", len(ids))
            task_status.started(self)
            try:
                await trio.sleep_forever()
            finally:
                self._supervisor = None

    def statistics(self) -> SupervisorStatistics:
        """Each running actor's state and restart count; none while the supervisor is down."""
        supervisor = self._supervisor
        return SupervisorStatistics({}) if supervisor is None else supervisor.statistics()

    async def _start(self, supervisor: Supervisor, job_id: UUID) -> None:
        async def factory(*, task_status: trio.TaskStatus[Any]) -> None:
            await job.JobActor.run(self.deps, job_id, task_status=task_status)

        spec = ChildSpec(id=str(job_id), factory=factory, restart=Restart.TRANSIENT)
        await supervisor.start_child(spec)

    async def start_job(self, job_id: UUID) -> None:
        """Start the actor of a job just committed (a submit or a retry)."""
        supervisor = self._supervisor
        if supervisor is None:
            raise mailbox.ActorUnavailable("the job system is not running")
        if not supervisor.has_child(str(job_id)):
            await self._start(supervisor, job_id)

    async def call(self, job_id: UUID, make: Any, within_sec: float = 10.0) -> Any:
        supervisor = self._supervisor
        if supervisor is None:
            raise mailbox.ActorUnavailable("the job system is not running")
        try:
            inbox = supervisor.handle(str(job_id))
        except KeyError:
            raise JobUnknown(str(job_id)) from None
        except ChildUnavailable:
            raise mailbox.ActorUnavailable(f"job {job_id} is restarting") from None
        return await mailbox.call(inbox, make, within_sec)

    async def work_dropped(self, node_id: UUID, work_ids: list[UUID]) -> None:
        """Tell the jobs whose ranges (or replica builds) the node dropped (no answer awaited)."""
        owners = {r["id"]: r["job_id"] for r in await self.deps.db.fetch(RANGE_OWNERS, work_ids)}
        for work in work_ids:
            job_id = owners.get(work, work)  # a replica build's work id is its job's id
            await self._tell(str(job_id), job.WorkDropped(node_id, work))

    async def _tell(self, child_id: str, message: object) -> None:
        supervisor = self._supervisor
        if supervisor is None:
            return
        try:
            inbox = supervisor.handle(child_id)
        except (KeyError, ChildUnavailable):
            return
        with trio.move_on_after(1.0) as waited:
            try:
                await inbox.send(message)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                return  # the job just ended
        if waited.cancelled_caught:
            log.warning("job %s is too busy to hear %r", child_id, message)

    async def node_lost(self, node_id: UUID) -> None:
        """Tell the jobs holding work on the node that it is gone (no answer awaited).

        The holders are read from PostgreSQL: a job whose assignment to this node commits just
        after the read is caught by the scheduler's sweep of work held by Offline nodes.
        """
        supervisor = self._supervisor
        if supervisor is None:
            return
        for r in await self.deps.db.fetch(HOLDERS, node_id):
            # A job too busy to hear it is caught up by the scheduler's sweep of work held by
            # Offline nodes.
            await self._tell(str(r["job_id"]), job.NodeGone(node_id))
