"""JobActor: one per non-terminal render job; the only writer of the job and its ranges.

Each message becomes an event for the pure ``job_steps.decide``; the decision is committed in
one transaction (job row, changed ranges, the frame reported, log lines, any refund) before the
actor answers or tells anyone else (DESIGN §2.1). Work handed to a node is first accepted by
the node's actor (it commits the command and its Busy status), then recorded here, so a node is
never told about a range this job does not record as its own for longer than one crash.
Validation and merging run as background tasks of the actor and come back as messages.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta
from typing import Any
from uuid import UUID, uuid4

import attrs
import trio

from flatrender.actors import node
from flatrender.actors.fleet import Fleet, NodeUnknown
from flatrender.actors.mailbox import ActorUnavailable, Reply, answer, fail
from flatrender.actors.merger import MergedExport, MergeFailed, Merger, MergeRequest
from flatrender.actors.validation import OutputCheck, check_output
from flatrender.config import Config
from flatrender.domain import job_steps as js
from flatrender.domain.crash_policy import CrashHistory, decide_crash
from flatrender.domain.model import CommandType, CrashAction
from flatrender.domain.pricing import retention_days
from flatrender.domain.splitting import split, trim_point
from flatrender.persistence import exports, job_state, jobs, ledger, nodes
from flatrender.persistence.db import Connection, Database
from flatrender.storage import ObjectStore

log = logging.getLogger("flatrender.job")

INBOX_SIZE = 256


@attrs.frozen
class JobDeps:
    db: Database
    store: ObjectStore
    fleet: Fleet
    merger: Merger
    config: Callable[[], Config]
    clock: Callable[[], datetime]
    wake_scheduler: Callable[[], None]


# ------------------------------------------------------------------ messages


@attrs.frozen
class AssignRange:
    range_id: UUID
    node_id: UUID
    reply: Reply  # -> bool: the node took it


@attrs.frozen
class AssignReplica:
    node_id: UUID
    reply: Reply  # -> bool


@attrs.frozen
class ReportFrame:
    node_id: UUID
    range_id: UUID
    frame: int
    file_size_bytes: int | None
    completed_at: datetime | None
    reply: Reply  # -> bool: False means fenced (409 stale_assignment)


@attrs.frozen
class ReplicaReady:
    node_id: UUID
    replica_key: str
    replica_md5: str | None
    reply: Reply  # -> bool: False means fenced


@attrs.frozen
class CrashReported:
    report: nodes.CrashReport
    reply: Reply  # -> CrashAnswer, or None when fenced


@attrs.frozen
class CrashAnswer:
    action: CrashAction
    reassigned_to_node_id: UUID | None = None


@attrs.frozen
class NodeGone:
    node_id: UUID
    reply: Reply | None = None


@attrs.frozen
class Cancel:
    reason: str
    reply: Reply  # -> int: refunded minor units


@attrs.frozen
class OfferTail:
    """An idle node is free: give the unstarted tail of this job's longest range to it."""

    reply: Reply  # -> bool: a tail is now Pending


@attrs.frozen
class Inspect:
    reply: Reply  # -> js.JobState


@attrs.frozen
class _Validated:
    range_id: UUID
    check: OutputCheck
    reply: Reply | None = None


@attrs.frozen
class _Merged:
    export: MergedExport | None
    error: str | None
    reply: Reply | None = None


Message = (
    AssignRange
    | AssignReplica
    | ReportFrame
    | ReplicaReady
    | CrashReported
    | NodeGone
    | Cancel
    | OfferTail
    | Inspect
    | _Validated
    | _Merged
)


class JobActor:
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
        # When each range's first frame came in (trio time): its holder's pace, for trims.
        self._first_frame_at: dict[UUID, float] = {}

    @classmethod
    async def run(
        cls,
        deps: JobDeps,
        job_id: UUID,
        *,
        task_status: trio.TaskStatus[trio.MemorySendChannel[Any]],
    ) -> None:
        """Rebuild from PostgreSQL, resume the job where it stood, serve until it is terminal."""
        loaded = await job_state.load(deps.db, job_id)
        if loaded is None or loaded[1].terminal:
            return  # nothing to run (a TRANSIENT child that returns is not restarted)
        send, recv = trio.open_memory_channel[Message](INBOX_SIZE)
        actor = cls(deps, loaded[0], loaded[1], send)
        async with trio.open_nursery() as nursery:
            actor._nursery = nursery
            task_status.started(send)
            await actor._resume()
            await actor._serve(recv)
            nursery.cancel_scope.cancel()

    # ------------------------------------------------------------------ start-up

    async def _resume(self) -> None:
        state = self.state
        match state.step:
            case js.JobStep.QUEUED:
                key = await self._existing_replica()
                if key is not None:
                    await self._apply(js.ReplicaAvailable(key, await self._plan()))
                else:
                    await self._apply(js.ReplicaMissing())
            case js.JobStep.PREPARING if state.replica_node_id is None:
                self.deps.wake_scheduler()
            case js.JobStep.RENDERING:
                for r in state.current_ranges:
                    if r.status is js.RangeStatus.RENDERED:
                        self._start_validation(r.id)
                self.deps.wake_scheduler()
            case js.JobStep.MERGING:
                self._start_merge(tuple(r.id for r in sorted(state.current_ranges, key=_order)))
            case _:
                pass

    async def _existing_replica(self) -> str | None:
        key = await self.deps.db.fetchval(
            "SELECT storage_key FROM replicas WHERE saved_project_id = $1 AND project_version = $2",
            self.row.saved_project_id,
            self.row.project_version,
        )
        return None if key is None else str(key)

    async def _plan(self) -> tuple[js.RangeState, ...]:
        cfg = self.deps.config().jobs
        idle = int(
            await self.deps.db.fetchval(
                "SELECT count(*) FROM nodes "
                "WHERE status = 'Idle' AND is_active AND accepts_new_jobs"
            )
        )
        return tuple(
            js.RangeState(id=uuid4(), start_frame=a, end_frame=b)
            for a, b in split(
                self.state.start_frame,
                self.state.end_frame,
                idle_nodes=idle,
                min_chunk=cfg.min_chunk_frames,
                max_chunk=cfg.max_chunk_frames,
            )
        )

    # ------------------------------------------------------------------ the loop

    async def _serve(self, inbox: trio.MemoryReceiveChannel[Message]) -> None:
        try:
            while not self.state.terminal:
                message = await inbox.receive()
                try:
                    await self._dispatch(message)
                except BaseException:
                    if message.reply is not None:
                        fail(message.reply)
                    raise
            await self._release_all_nodes()
        finally:
            # Messages that queued behind the last one would otherwise be dropped unanswered
            # and their callers wait out their timeout. No checkpoint between the last look and
            # the close: a later sender finds the inbox closed at once.
            self._answer_waiting(inbox)
            inbox.close()
        log.info("job %s is %s", self.state.job_id, self.state.step.value)

    def _answer_waiting(self, inbox: trio.MemoryReceiveChannel[Message]) -> None:
        """Answer what waits in the inbox without I/O: a terminal job refuses node reports and
        work (409 ``stale_assignment``, an offer declined); anything else (a cancel, or every
        message when the actor is crashing) fails, so the caller looks at the committed state."""
        while True:
            try:
                message = inbox.receive_nowait()
            except (trio.WouldBlock, trio.EndOfChannel):
                return
            reply = message.reply
            if reply is None:
                continue  # a background result (validation, merge): moot now
            if not self.state.terminal:
                fail(reply)
                continue
            match message:
                case AssignRange() | AssignReplica() | ReportFrame() | ReplicaReady():
                    answer(reply, False)
                case OfferTail():
                    answer(reply, False)
                case CrashReported() | NodeGone():
                    answer(reply, None)
                case Inspect():
                    answer(reply, self.state)
                case _:
                    fail(reply)

    async def _dispatch(self, message: Message) -> None:
        match message:
            case AssignRange(range_id=range_id, node_id=node_id):
                answer(message.reply, await self._assign_range(range_id, node_id))
            case AssignReplica(node_id=node_id):
                answer(message.reply, await self._assign_replica(node_id))
            case ReportFrame():
                answer(message.reply, await self._report_frame(message))
            case ReplicaReady():
                answer(message.reply, await self._replica_ready(message))
            case CrashReported(report=report):
                answer(message.reply, await self._crash(report))
            case NodeGone(node_id=node_id):
                await self._apply(js.NodeLost(node_id))
                if message.reply is not None:
                    answer(message.reply, None)
            case Cancel(reason=reason):
                decision = await self._apply(js.CancelRequested(reason))
                answer(message.reply, _refunded(decision))
            case OfferTail():
                answer(message.reply, await self._offer_tail())
            case Inspect():
                answer(message.reply, self.state)
            case _Validated(range_id=range_id, check=check):
                await self._validated(range_id, check)
            case _Merged(export=export, error=error):
                await self._merged(export, error)

    # ------------------------------------------------------------------ handlers

    async def _assign_range(self, range_id: UUID, node_id: UUID) -> bool:
        decision = js.decide(self.state, js.RangeAssigned(range_id, node_id), self._policy())
        if decision.outcome is not js.Outcome.APPLIED:
            return False
        r = self.state.range(range_id)
        assert r is not None
        if not await self._give_node(
            node_id, range_id, CommandType.RENDER_FRAMES, await self._render_payload(r)
        ):
            return False
        await self._commit(decision)
        return True

    async def _assign_replica(self, node_id: UUID) -> bool:
        decision = js.decide(self.state, js.ReplicaBuilderAssigned(node_id), self._policy())
        if decision.outcome is not js.Outcome.APPLIED:
            return False
        payload = await self._replica_payload()
        if not await self._give_node(
            node_id, self.state.job_id, CommandType.PREPARE_REPLICA, payload
        ):
            return False
        await self._commit(decision)
        return True

    async def _give_node(
        self, node_id: UUID, work_id: UUID, kind: CommandType, payload: dict[str, object]
    ) -> bool:
        try:
            await self.deps.fleet.call(
                node_id, lambda reply: node.Assign(work_id, kind, payload, reply)
            )
        except (node.NodeNotIdle, NodeUnknown, ActorUnavailable):
            return False
        return True

    async def _report_frame(self, message: ReportFrame) -> bool:
        event = js.FrameReported(message.range_id, message.node_id, message.frame)
        decision = js.decide(self.state, event, self._policy())
        if decision.outcome is js.Outcome.UNCHANGED:
            return True  # a repeated report: already recorded
        self._first_frame_at.setdefault(message.range_id, trio.current_time())
        report = (
            message.range_id,
            message.frame,
            message.node_id,
            message.file_size_bytes,
            message.completed_at,
        )
        await self._commit(decision, report=report if not decision.fenced else None)
        return not decision.fenced

    async def _replica_ready(self, message: ReplicaReady) -> bool:
        if (
            self.state.step is not js.JobStep.PREPARING
            or self.state.replica_node_id != message.node_id
        ):
            return self.state.replica_key == message.replica_key  # a repeat is harmless
        if await self.deps.store.stat(message.replica_key) is None:
            return False
        plan = await self._plan()

        async def record(conn: Connection) -> None:
            await conn.execute(
                "INSERT INTO replicas (saved_project_id, project_version, storage_key, md5, "
                "built_by_node_id) VALUES ($1, $2, $3, $4, $5) ON CONFLICT DO NOTHING",
                self.row.saved_project_id,
                self.row.project_version,
                message.replica_key,
                message.replica_md5,
                message.node_id,
            )

        decision = await self._apply(js.ReplicaBuilt(message.replica_key, plan), also=record)
        await self._unassign(message.node_id, self.state.job_id, succeeded=True)
        return not decision.fenced

    async def _offer_tail(self) -> bool:
        cfg = self.deps.config()
        best: tuple[int, js.RangeState, int] | None = None
        for r in self.state.current_ranges:
            if r.status not in (js.RangeStatus.ASSIGNED, js.RangeStatus.RENDERING) or r.trim:
                continue
            next_frame = max(r.reported_frames) + 1 if r.reported_frames else r.start_frame
            new_end = trim_point(
                r.start_frame,
                r.end_frame,
                next_frame,
                min_tail=max(cfg.jobs.trim_min_tail_frames, cfg.jobs.min_chunk_frames),
                margin=max(cfg.jobs.trim_margin_frames, self._frames_until_heard(r)),
            )
            if new_end is not None and (best is None or r.end_frame - new_end > best[0]):
                best = (r.end_frame - new_end, r, new_end)
        if best is None:
            return False
        _, r, new_end = best
        decision = js.decide(self.state, js.TrimmedTail(r.id, new_end, uuid4()), self._policy())
        if decision.outcome is not js.Outcome.APPLIED:
            return False
        await self._commit(decision)
        return True

    def _frames_until_heard(self, r: js.RangeState) -> int:
        """Frames the holder renders before a trim reaches it: its pace over two heartbeats."""
        started = self._first_frame_at.get(r.id)
        if started is None or len(r.reported_frames) < 2:
            return 0
        pace = len(r.reported_frames) / max(trio.current_time() - started, 1e-3)
        return math.ceil(pace * self.deps.config().nodes.heartbeat_interval_sec * 2)

    async def _crash(self, report: nodes.CrashReport) -> CrashAnswer | None:
        r = self.state.range(report.frame_job_id) if report.frame_job_id else None
        if r is None or r.node_id != report.node_id:
            return None
        verdict = decide_crash(
            await self._crash_history(report.node_id, r),
            max_attempts=self.deps.config().jobs.max_attempts,
            node_restart_after=self.deps.config().nodes.crash_restart_after,
        )
        outcome: node.CrashOutcome = await self.deps.fleet.call(
            report.node_id, lambda reply: node.RecordCrash(report, reply, verdict.action)
        )
        if not outcome.counted:
            return CrashAnswer(CrashAction(outcome.crash.recovery_action))
        decision = await self._apply(js.CrashDecided(r.id, report.node_id, verdict))
        if decision.fenced:
            return None
        return CrashAnswer(verdict.action)

    async def _crash_history(self, node_id: UUID, r: js.RangeState) -> CrashHistory:
        window = timedelta(seconds=self.deps.config().nodes.crash_window_sec)
        row = await self.deps.db.fetchrow(
            "SELECT count(*) FILTER (WHERE crashed_at > $3) AS recent, "
            "count(*) FILTER (WHERE frame_job_id = $2) AS on_range "
            "FROM node_crashes WHERE node_id = $1",
            node_id,
            r.id,
            self.deps.clock() - window,
        )
        return CrashHistory(int(row["recent"]), int(row["on_range"]), r.attempt)

    async def _validated(self, range_id: UUID, check: OutputCheck) -> None:
        async def preview(conn: Connection) -> None:
            if check.preview_b64 is not None:
                await conn.execute(
                    "UPDATE render_jobs SET image_preview_b64 = $2 WHERE id = $1",
                    self.state.job_id,
                    check.preview_b64,
                )

        await self._apply(js.OutputValidated(range_id, check.ok, check.error), also=preview)

    async def _merged(self, export: MergedExport | None, error: str | None) -> None:
        self._merge_scope = None
        if export is None:
            await self._apply(js.MergeFailed(error or "unknown merge failure"))
            return
        row = self.row
        days = retention_days(row.price_type, self.deps.config().exports)

        async def record(conn: Connection) -> None:
            await exports.record(conn, row, export, self.deps.clock(), timedelta(days=days))

        await self._apply(js.ExportRecorded(export.export_id), also=record)

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
        report: tuple[UUID, int, UUID, int | None, datetime | None] | None = None,
    ) -> None:
        """Commit the decision whole, then perform the effects that are messages."""
        old, new = self.state, decision.state
        if old != new or decision.effects or also is not None or report is not None:
            now = self.deps.clock()
            async with self.deps.db.transaction() as conn:
                if also is not None:
                    await also(conn)
                self.revision = await job_state.save(
                    conn, self.revision, old, new, self.row.output_format, now, report
                )
                for effect in decision.effects:
                    await self._in_transaction(conn, effect)
        self.state = new
        for effect in decision.effects:
            await self._perform(effect, old)

    async def _in_transaction(self, conn: Connection, effect: js.Effect) -> None:
        job = self.state.job_id
        match effect:
            case js.Log(level=level, message=text, node_id=node_id):
                await jobs.log(conn, job, level, text, node_id=node_id)
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
            case _:
                pass

    async def _perform(self, effect: js.Effect, old: js.JobState) -> None:
        job = self.state.job_id
        match effect:
            case js.RequestReplicaBuilder() | js.QueueRange():
                self.deps.wake_scheduler()
            case js.RequeueRange(failed_range_id=failed):
                was = old.range(failed)
                if was is not None and was.node_id is not None:
                    await self._unassign(was.node_id, failed, succeeded=False)
                self.deps.wake_scheduler()
            case js.CancelRender(range_id=range_id, node_id=node_id):
                payload: dict[str, object] = {"job_id": str(job), "frame_job_id": str(range_id)}
                await self._tell_node(node_id, CommandType.CANCEL_RENDER, payload)
                await self._unassign(node_id, range_id, succeeded=False)
            case js.SendTrimRange(range_id=range_id, node_id=node_id, end_frame=end):
                trim: dict[str, object] = {
                    "job_id": str(job),
                    "frame_job_id": str(range_id),
                    "end_frame": end,
                }
                await self._tell_node(node_id, CommandType.TRIM_RANGE, trim)
            case js.ValidateOutput(range_id=range_id):
                self._start_validation(range_id)
            case js.NodeSucceeded(node_id=node_id):
                for r in self.state.current_ranges:
                    if r.node_id == node_id and r.status is js.RangeStatus.VALIDATED:
                        await self._unassign(node_id, r.id, succeeded=True)
            case js.StartMerge(range_ids=ids):
                self._start_merge(ids)
            case js.AbortMerge():
                if self._merge_scope is not None:
                    self._merge_scope.cancel()
            case _:
                pass  # SendRenderFrames/SendPrepareReplica happened before the commit; the rest
                # (logs, refunds) were written in it

    # ------------------------------------------------------------------ nodes

    async def _tell_node(
        self, node_id: UUID, kind: CommandType, payload: dict[str, object]
    ) -> None:
        try:
            await self.deps.fleet.call(node_id, lambda reply: node.Enqueue(kind, payload, reply))
        except (NodeUnknown, ActorUnavailable) as e:
            log.warning(
                "job %s: could not tell node %s to %s: %s",
                self.state.job_id,
                node_id,
                kind.value,
                e,
            )

    async def _unassign(self, node_id: UUID, work_id: UUID, *, succeeded: bool) -> None:
        try:
            await self.deps.fleet.call(
                node_id, lambda reply: node.Unassign(work_id, succeeded, reply)
            )
        except (NodeUnknown, ActorUnavailable) as e:
            log.warning("job %s: could not release node %s: %s", self.state.job_id, node_id, e)

    async def _release_all_nodes(self) -> None:
        for r in self.state.ranges:
            if r.node_id is not None:
                await self._unassign(
                    r.node_id, r.id, succeeded=r.status is js.RangeStatus.VALIDATED
                )

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
        key = f"replicas/{row.saved_project_id}/{row.project_version}.aep"
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

        async def validate() -> None:
            check = await check_output(self.deps.store, key, expected)
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
                    export = await self.deps.merger.merge(request)
                except MergeFailed as e:
                    await self.inbox.send(_Merged(None, str(e)))
                    return
                await self.inbox.send(_Merged(export, None))

        self._nursery.start_soon(merge)

    _nursery: trio.Nursery


def _order(r: js.RangeState) -> int:
    return r.order_value


def _refunded(decision: js.Decision) -> int:
    return sum(
        e.amount_minor
        for e in decision.effects
        if isinstance(e, js.RefundFull | js.RefundCancelShare)
    )
