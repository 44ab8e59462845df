"""The JobActor's committing half: its state, how a decision is committed, its effects performed.

A decision is committed in one transaction (job row, changed ranges, the frame reported, log
lines, any refund) before the actor answers or tells anyone else (DESIGN §2.1); the effects that
are messages (node commands, scheduler wake-ups, validation and merge tasks) follow the commit.
Validation and merging run as background tasks of the actor and come back as messages. The
calls to nodes and the outbox that sends a decision's messages to them are
:mod:`flatrender.actors.job_nodes`'.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Sequence
from datetime import datetime, timedelta
from functools import partial
from typing import Any
from uuid import UUID

import attrs
import trio

from flatrender import logs
from flatrender.actors import snapshot_objects
from flatrender.actors.fleet import Fleet
from flatrender.actors.job_messages import _Merged, _Validated
from flatrender.actors.job_nodes import JobNodes
from flatrender.actors.merger import MergeFailed, Merger, MergeRequest
from flatrender.actors.validation import OutputCheck, check_output, check_still, until_checked
from flatrender.config import Config
from flatrender.domain import job_steps as js
from flatrender.domain.model import CommandType
from flatrender.domain.notify import job_end_payload
from flatrender.domain.progress import ProgressInputs
from flatrender.metrics import Counters
from flatrender.persistence import job_state, jobs, ledger, notifications, snapshots
from flatrender.persistence.db import Connection, Database
from flatrender.storage import ObjectStore, StorageError

log = logging.getLogger("flatrender.job")


@attrs.frozen
class JobDeps:
    db: Database
    store: ObjectStore
    fleet: Fleet
    merger: Merger
    config: Callable[[], Config]
    clock: Callable[[], datetime]
    wake_scheduler: Callable[[], None]
    # A job-end notification was committed (tell_me_when_done): the Notifier may deliver it.
    notification_written: Callable[[], None] = lambda: None
    # Told every committed state (the ProgressHub's publish); must not block.
    progress: Callable[[ProgressInputs], None] = lambda _: None
    counters: Counters = attrs.Factory(Counters)


class JobEffects(JobNodes):
    """The state a JobActor owns and the machinery to commit decisions about it."""

    def __init__(
        self,
        deps: JobDeps,
        row: jobs.JobRow,
        state: js.JobState,
        inbox: trio.MemorySendChannel[Any],
    ) -> None:
        self.deps = deps
        self.row = row
        self.state = state
        self.revision = row.revision
        self.inbox = inbox
        self._merge_scope: trio.CancelScope | None = None
        self.cancel_reason = row.cancel_reason
        # When each range's first frame came in (trio time): its holder's pace, for trims.
        self._first_frame_at: dict[UUID, float] = {}
        # When (trio time) each Pending range became ready to hand out (for those rebuilt
        # Pending: now), until a node takes it: the start of its dispatch latency.
        now = trio.current_time()
        self._ready_at: dict[UUID, float] = {
            r.id: now for r in state.current_ranges if r.status is js.RangeStatus.PENDING
        }
        self.preview_b64 = row.image_preview_b64
        self._open_outbox()
        self._publish()

    # ------------------------------------------------------------------ deciding and committing

    def _policy(self) -> js.JobPolicy:
        return js.JobPolicy(max_attempts=self.deps.config().jobs.max_attempts)

    async def _apply(
        self, event: js.JobEvent, *, also: Callable[[Connection], Awaitable[None]] | None = None
    ) -> js.Decision:
        decision = js.decide(self.state, event, self._policy())
        await self._commit(decision, also=also)
        return decision

    async def _commit(
        self,
        decision: js.Decision,
        *,
        also: Callable[[Connection], Awaitable[None]] | None = None,
        reports: Sequence[job_state.FrameReport] = (),
        on_committed: Callable[[], None] | None = None,
        wait_out: bool = True,
    ) -> None:
        """Commit the decision whole, then call ``on_committed`` (answer the caller), then
        perform the effects that are messages (see :meth:`_committed` for ``wait_out``)."""
        write = self._write_of(decision, also=also, reports=reports)
        if write is not None:
            kept = (self.cancel_reason, self.preview_b64)
            try:
                self.revision = await self.deps.db.atomic(write)
            except BaseException:
                # An ``also`` body sets these for the job-end payload written after it in the
                # same transaction; not committed, they are not the actor's either (a refused
                # write leaves the state as it was: MESSAGE_ERRORS).
                self.cancel_reason, self.preview_b64 = kept
                raise
        await self._committed(decision, on_committed=on_committed, also=also, wait_out=wait_out)

    def _write_of(
        self,
        decision: js.Decision,
        *,
        also: Callable[[Connection], Awaitable[None]] | None = None,
        reports: Sequence[job_state.FrameReport] = (),
    ) -> Callable[[Connection], Awaitable[int]] | None:
        """The transaction body that commits ``decision`` (it returns the job's new revision),
        or None when there is nothing to write. It may run inside another actor's transaction
        while this actor waits for it (a crash: the node's record and the job's decision
        commit together), so it reads this actor's state now, not when it runs."""
        old, new = self.state, decision.state
        notify = self._notifies(old, new)
        if old != new or decision.effects or also is not None or reports:
            now = self.deps.clock()
            revision = self.revision

            async def write(conn: Connection) -> int:
                # Runs on the asyncio side in one bridge crossing: database calls only.
                if also is not None:
                    await also(conn)
                saved = await job_state.save(
                    conn, revision, old, new, self.row.output_format, now, reports
                )
                lines = [
                    (e.level, e.message, e.node_id)
                    for e in decision.effects
                    if isinstance(e, js.Log)
                ]
                if lines:
                    await jobs.log_many(conn, new.job_id, lines)
                for effect in decision.effects:
                    await self._in_transaction(conn, effect)
                if notify:
                    await notifications.enqueue(
                        conn, self.row.id, self.row.user_id, self._end_payload(new, now), now
                    )
                return saved

            return write
        return None

    def _notifies(self, old: js.JobState, new: js.JobState) -> bool:
        return self.row.tell_me_when_done and new.terminal and not old.terminal

    async def _committed(
        self,
        decision: js.Decision,
        *,
        on_committed: Callable[[], None] | None = None,
        also: Callable[[Connection], Awaitable[None]] | None = None,
        wait_out: bool = True,
    ) -> None:
        """After ``decision`` committed: take its state, call ``on_committed``, tell the
        Notifier and the live progress, then perform the effects that are messages. Messages
        to nodes go through the outbox; with ``wait_out`` they are sent before this returns
        (the caller answers after), else the actor serves its next message meanwhile."""
        old, new = self.state, decision.state
        notify = self._notifies(old, new)
        self.state = new
        if old.step is not new.step:
            log.info(
                "job %s: %s -> %s",
                new.job_id,
                old.step.value,
                new.step.value,
                extra=logs.about(job_id=new.job_id),
            )
        if on_committed is not None:
            on_committed()
        if notify:
            self.deps.notification_written()
        if old != new or also is not None:
            self._publish()
        for effect in decision.effects:
            await self._perform(effect, old)
        if wait_out:
            await self._drain()

    def _publish(self) -> None:
        """Live progress (WebSocket and ``GET .../progress``) follows every committed state."""
        if self.state.snapshot:
            return  # served by neither: it would only evict render jobs from the hub's memory
        self.deps.progress(
            ProgressInputs(self.state, self.revision, self.preview_b64, self.cancel_reason)
        )

    def _end_payload(self, new: js.JobState, now: datetime) -> dict[str, Any]:
        return job_end_payload(
            job_id=self.row.id,
            user_id=self.row.user_id,
            name=self.row.name,
            step=new.step.value,
            export_id=new.export_id,
            message=new.failed_message or self.cancel_reason,
            ended_at=now,
        )

    async def _in_transaction(self, conn: Connection, effect: js.Effect) -> None:
        job = self.state.job_id
        match effect:
            case js.Log():
                pass  # written together before the other effects
            case js.RefundFull(amount_minor=amount, reason=reason):
                await ledger.lock_account(conn, self.row.user_id)
                await ledger.append(
                    conn, self.row.user_id, "refund", amount, job_id=job, note=reason
                )
            case js.RefundCancelShare(amount_minor=amount):
                await ledger.lock_account(conn, self.row.user_id)
                await ledger.append(
                    conn, self.row.user_id, "refund", amount, job_id=job, note="cancelled"
                )
            case js.SnapshotRendering():
                await snapshots.mark_rendering(conn, job)
            case js.CacheSnapshot(width=width, height=height, range_id=range_id):
                now = self.deps.clock()
                expires = now + timedelta(hours=self.deps.config().snapshots.expiry_hours)
                image = job_state.output_key(job, range_id, self.row.output_format)
                thumbnail = snapshots.thumbnail_key(job)
                await snapshots.mark_cached(
                    conn, job, width, height, now, expires, image, thumbnail
                )
            case js.FailSnapshot():
                await snapshots.mark_failed(conn, job, self.deps.clock())
            case _:
                pass

    async def _perform(self, effect: js.Effect, old: js.JobState) -> None:
        job = self.state.job_id
        match effect:
            case js.QueueRange(range=r):
                self._ready_at[r.id] = trio.current_time()
                self.deps.wake_scheduler()
            case js.RequestReplicaBuilder():
                self.deps.wake_scheduler()
            case js.RequeueRange(failed_range_id=failed, replacement=r):
                self._ready_at[r.id] = trio.current_time()
                was = old.range(failed)
                if was is not None and was.node_id is not None:
                    self._later(self._unassign, was.node_id, failed, succeeded=False)
                self.deps.wake_scheduler()
            case js.CancelRender(range_id=range_id, node_id=node_id):
                payload: dict[str, object] = {"job_id": str(job), "frame_job_id": str(range_id)}
                self._later(self._tell_node, node_id, CommandType.CANCEL_RENDER, payload)
                self._later(self._unassign, node_id, range_id, succeeded=False)
            case js.SendTrimRange(range_id=range_id, node_id=node_id, end_frame=end):
                trim: dict[str, object] = {
                    "job_id": str(job),
                    "frame_job_id": str(range_id),
                    "end_frame": end,
                }
                self._later(self._tell_node, node_id, CommandType.TRIM_RANGE, trim)
            case js.ValidateOutput(range_id=range_id):
                self._start_validation(range_id)
            case js.NodeSucceeded(node_id=node_id):
                for r in self.state.current_ranges:
                    if r.node_id == node_id and r.status is js.RangeStatus.VALIDATED:
                        self._later(self._unassign, node_id, r.id, succeeded=True)
            case js.StartMerge(range_ids=ids):
                self._start_merge(ids)
            case js.AbortMerge():
                if self._merge_scope is not None:
                    self._merge_scope.cancel()
            case js.CacheSnapshot(range_id=range_id):
                await self._sweep_snapshot(range_id)
            case _:
                pass  # SendRenderFrames/SendPrepareReplica happened before the commit; the rest
                # (logs, refunds) were written in it

    async def _sweep_snapshot(self, range_id: UUID) -> None:
        """Superseded attempts' PNGs go once the image is cached; one that fails to go now (or
        is uploaded late) goes with the snapshot when it expires."""
        job = self.state.job_id
        keep = (
            job_state.output_key(job, range_id, self.row.output_format),
            snapshots.thumbnail_key(job),
        )
        try:
            await snapshot_objects.sweep_superseded(self.deps.store, job, keep)
        except StorageError as e:
            log.warning("job %s: superseded snapshot attempts left for expiry: %s", job, e)

    # ------------------------------------------------------------------ payloads

    async def _render_payload(self, r: js.RangeState) -> dict[str, object]:
        row, store = self.row, self.deps.store
        key = job_state.output_key(row.id, r.id, row.output_format)
        replica = self.state.replica_key or ""
        return {
            "job_id": str(row.id),
            "frame_job_id": str(r.id),
            "start_frame": r.start_frame,
            "end_frame": r.end_frame,
            "attempt": r.attempt,
            "replica_url": await store.presign_get(replica) if replica else "",
            "quality": row.quality,
            "resolution": row.resolution,
            "frame_rate": row.frame_rate,
            "output_format": row.output_format,
            "upload_url": await store.presign_put(key),
            "output_key": key,
        }

    async def _replica_payload(self) -> dict[str, object]:
        row = self.row
        project = await self.deps.db.fetchrow(
            "SELECT template_md5, template_url FROM catalog_projects WHERE saved_project_id = $1",
            row.saved_project_id,
        )
        key = job_state.replica_key(row.saved_project_id, row.project_version)
        return {
            "job_id": str(row.id),
            "saved_project_id": str(row.saved_project_id),
            "template_md5": project["template_md5"],
            "template_url": project["template_url"],
            "replica_upload_url": await self.deps.store.presign_put(key),
            "replica_key": key,
        }

    # ------------------------------------------------------------------ background work

    def _start_validation(self, range_id: UUID) -> None:
        r = self.state.range(range_id)
        assert r is not None
        key = job_state.output_key(self.state.job_id, r.id, self.row.output_format)
        expected = r.frame_count if self.row.output_format == "mp4" else 1
        store = self.deps.store

        async def run_check() -> OutputCheck:
            if self.state.snapshot:
                return await check_still(store, key, snapshots.thumbnail_key(self.state.job_id))
            return await check_output(store, key, expected)

        async def validate() -> None:
            check = await until_checked(run_check, f"job {self.state.job_id}: output {key}")
            await self.inbox.send(_Validated(range_id, check))

        self._nursery.start_soon(validate)

    def _start_merge(self, range_ids: tuple[UUID, ...]) -> None:
        keys = tuple(
            job_state.output_key(self.state.job_id, i, self.row.output_format) for i in range_ids
        )
        request = MergeRequest(self.state.job_id, keys, self.state.total_frames)
        scope = trio.CancelScope()
        self._merge_scope = scope

        async def merge() -> None:
            with scope:
                try:
                    export = await until_checked(
                        partial(self.deps.merger.merge, request), f"job {request.job_id}: merge"
                    )
                except MergeFailed as e:
                    await self.inbox.send(_Merged(None, str(e)))
                    return
                await self.inbox.send(_Merged(export, None))

        self._nursery.start_soon(merge)

    _nursery: trio.Nursery
