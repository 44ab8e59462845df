"""JobActor: one per non-terminal render job; the only writer of the job and its ranges.

Each message (:mod:`flatrender.actors.job_messages`, re-exported here) becomes an event for the
pure ``job_steps.decide``; the decision is committed (:mod:`flatrender.actors.job_effects`) in one
transaction before the actor answers or tells anyone else (DESIGN §2.1). Work handed to a node is
first accepted by the node's actor (it commits the command and its Busy status), then recorded
here, so a node is never told about a range this job does not record as its own for longer than
one crash. Validation and merging run as background tasks of the actor and come back as messages.

Here: start-up and resume, the message loop, assignments, trims and cancels; the handlers of
what nodes and background tasks report are in :mod:`flatrender.actors.job_reports`.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Awaitable, Callable
from typing import Any
from uuid import UUID, uuid4

import trio

from flatrender import logs
from flatrender.actors.job_effects import JobDeps as JobDeps
from flatrender.actors.job_messages import Abort as Abort
from flatrender.actors.job_messages import AssignRange as AssignRange
from flatrender.actors.job_messages import AssignRanges as AssignRanges
from flatrender.actors.job_messages import AssignReplica as AssignReplica
from flatrender.actors.job_messages import Cancel as Cancel
from flatrender.actors.job_messages import CrashAnswer as CrashAnswer
from flatrender.actors.job_messages import CrashReported as CrashReported
from flatrender.actors.job_messages import Inspect as Inspect
from flatrender.actors.job_messages import Message as Message
from flatrender.actors.job_messages import NodeGone as NodeGone
from flatrender.actors.job_messages import OfferTail as OfferTail
from flatrender.actors.job_messages import ReplicaReady as ReplicaReady
from flatrender.actors.job_messages import ReportFrame as ReportFrame
from flatrender.actors.job_messages import WorkDropped as WorkDropped
from flatrender.actors.job_messages import _Merged, _Validated
from flatrender.actors.job_reports import JobReports
from flatrender.actors.mailbox import MESSAGE_ERRORS, answer, fail, refuse
from flatrender.domain import job_steps as js
from flatrender.domain.model import CommandType
from flatrender.domain.splitting import trim_point
from flatrender.persistence import job_state
from flatrender.persistence.db import Connection

log = logging.getLogger("flatrender.job")

INBOX_SIZE = 256
# Frame reports waiting in the inbox together are committed in one transaction, up to this many.
REPORTS_PER_COMMIT = 64


class JobActor(JobReports):
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
            actor._out_task = True
            nursery.start_soon(actor._send_out)
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
        # FOR SHARE waits out a Reaper that holds the row to delete it, then finds no row.
        key = await self.deps.db.fetchval(
            "SELECT storage_key FROM replicas WHERE saved_project_id = $1 AND project_version = $2"
            " FOR SHARE",
            self.row.saved_project_id,
            self.row.project_version,
        )
        return None if key is None else str(key)

    # ------------------------------------------------------------------ the loop

    async def _serve(self, inbox: trio.MemoryReceiveChannel[Message]) -> None:
        held: Message | None = None  # taken from the inbox while gathering reports: next
        try:
            while not self.state.terminal:
                message = held if held is not None else await inbox.receive()
                held = None
                if isinstance(message, ReportFrame):
                    reports, held = _gather_reports(message, inbox)
                    await self._serve_reports(reports)
                    continue
                if not isinstance(message, CrashReported):
                    # Crash and frame reports (answered right after their commit) need not wait
                    # for the messages earlier decisions send to nodes; the rest sees them sent.
                    await self._drain()
                await self._serve_one(message)
            await self._drain()
            await self._release_all_nodes()
        finally:
            # Messages that queued behind the last one would otherwise be dropped unanswered
            # and their callers wait out their timeout. No checkpoint between the last look and
            # the close: a later sender finds the inbox closed at once.
            if held is not None:
                self._answer_unserved(held)
            self._answer_waiting(inbox)
            inbox.close()
        log.info(
            "job %s is %s",
            self.state.job_id,
            self.state.step.value,
            extra=logs.about(job_id=self.state.job_id),
        )

    async def _serve_one(self, message: Message) -> None:
        """Handle one message. One whose data is refused (``MESSAGE_ERRORS``) is answered with
        the error and the actor goes on: its commit failed, so its state is as it was. A
        background result refused has nobody to answer (:meth:`_background_refused`). Anything
        else fails the message and crashes the actor."""
        try:
            await self._dispatch(message)
        except MESSAGE_ERRORS as e:
            if message.reply is None:
                await self._background_refused(message, e)
            else:
                refuse(f"job {self.state.job_id}", message, message.reply, e)
        except BaseException:
            if message.reply is not None:
                fail(message.reply)
            raise

    async def _background_refused(self, message: Message, error: Exception) -> None:
        """A background result whose commit was refused. Crashing would not help a validation
        or a merge: the restarted actor runs it again on the same output (``_resume``), gets the
        same refused result, and crashes until the supervisor escalates. So the result counts
        as its step's failure, written without its data: a validation failed (the range is
        rendered again, and the job fails with its refund once the attempts are spent), a merge
        failed (the job fails with its refund). Any other message without a reply (WorkDropped,
        NodeGone: written from the actor's own state, no client value in it) crashes the actor
        for its supervisor to restart, as before (:func:`refuse`)."""
        who = f"job {self.state.job_id}"
        match message:
            case _Validated(range_id=range_id):
                log.error("%s: the check of range %s was refused: %s", who, range_id, error)
                why = f"its result could not be stored: {error}"
                await self._apply(js.OutputValidated(range_id, False, why))
            case _Merged():
                log.error("%s: the merged export was refused: %s", who, error)
                self._merge_scope = None
                await self._apply(js.MergeFailed(f"the export could not be recorded: {error}"))
            case _:
                refuse(who, message, None, error)

    async def _serve_reports(self, reports: list[ReportFrame]) -> None:
        """Frame reports waiting together are committed together; each is answered after. When
        one report's data spoils the batch's commit, each is served on its own, so that only
        the bad one is refused."""
        if len(reports) == 1:
            await self._serve_one(reports[0])
            return
        try:
            await self._report_frames(reports)
        except MESSAGE_ERRORS:
            for message in reports:
                await self._serve_one(message)  # answers to those answered already are moot
        except BaseException:
            for message in reports:
                fail(message.reply)  # a no-op for those answered after the commit
            raise

    def _answer_waiting(self, inbox: trio.MemoryReceiveChannel[Message]) -> None:
        while True:
            try:
                message = inbox.receive_nowait()
            except (trio.WouldBlock, trio.EndOfChannel):
                return
            self._answer_unserved(message)

    def _answer_unserved(self, message: Message) -> None:
        """Answer a message left unserved, without I/O: a terminal job refuses node reports and
        work (409 ``stale_assignment``, an offer declined); anything else (a cancel, or every
        message when the actor is crashing) fails, so the caller looks at the committed state."""
        reply = message.reply
        if reply is None:
            return  # a background result (validation, merge): moot now
        if not self.state.terminal:
            fail(reply)
            return
        match message:
            case AssignRange() | AssignReplica() | ReportFrame() | ReplicaReady():
                answer(reply, False)
            case AssignRanges():
                answer(reply, frozenset())
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
            case AssignRanges(pairs=pairs):
                answer(message.reply, await self._assign_ranges(pairs))
            case AssignReplica(node_id=node_id):
                answer(message.reply, await self._assign_replica(node_id))
            case ReportFrame():
                await self._report_frames([message])
            case ReplicaReady():
                answer(message.reply, await self._replica_ready(message))
            case CrashReported(report=report):
                await self._crash(report, message.reply)
            case NodeGone(node_id=node_id):
                await self._apply(js.NodeLost(node_id))
                if message.reply is not None:
                    answer(message.reply, None)
            case WorkDropped(node_id=node_id, work_id=work_id):
                await self._work_dropped(node_id, work_id)
            case Cancel(reason=reason):
                decision = await self._apply(
                    js.CancelRequested(reason), also=self._record_cancel_reason(reason)
                )
                answer(message.reply, _refunded(decision))
            case Abort(message=text):
                answer(message.reply, _refunded(await self._apply(js.Abort(text))))
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
        payload = await self._render_payload(r)
        ready_at = self._ready_at.get(range_id)
        if not await self._give_node(
            node_id, range_id, CommandType.RENDER_FRAMES, payload, ready_at
        ):
            return False
        await self._commit(decision)
        self._ready_at.pop(range_id, None)
        return True

    async def _assign_ranges(self, pairs: tuple[tuple[UUID, UUID], ...]) -> frozenset[UUID]:
        """Offer each range to its node, all at once; commit the ranges taken in one decision.

        As for one range, each node's actor commits its command before this job commits the
        assignment, so a node holds a command for a range this job does not record only across
        a crash between the two commits (its report is then fenced, DESIGN §4).
        """
        policy = self._policy()
        offers: list[tuple[UUID, UUID, dict[str, object]]] = []
        for range_id, node_id in dict(pairs).items():  # a range offered twice: its last node
            event = js.RangeAssigned(range_id, node_id)
            if js.decide(self.state, event, policy).outcome is not js.Outcome.APPLIED:
                continue
            r = self.state.range(range_id)
            assert r is not None
            offers.append((range_id, node_id, await self._render_payload(r)))
        took: set[UUID] = set()

        async def offer(range_id: UUID, node_id: UUID, payload: dict[str, object]) -> None:
            ready_at = self._ready_at.get(range_id)
            if await self._give_node(
                node_id, range_id, CommandType.RENDER_FRAMES, payload, ready_at
            ):
                took.add(range_id)

        async with trio.open_nursery() as nursery:
            for range_id, node_id, payload in offers:
                nursery.start_soon(offer, range_id, node_id, payload)
        state, effects = self.state, list[js.Effect]()
        for range_id, node_id, _ in offers:
            if range_id in took:
                decision = js.decide(state, js.RangeAssigned(range_id, node_id), policy)
                state = decision.state
                effects.extend(decision.effects)
        if took:
            await self._commit(js.Decision(state, tuple(effects)))
            for range_id in took:
                self._ready_at.pop(range_id, None)
        return frozenset(took)

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

    def _record_cancel_reason(self, reason: str) -> Callable[[Connection], Awaitable[None]]:
        async def record(conn: Connection) -> None:
            await conn.execute(
                "UPDATE render_jobs SET cancel_reason = $2 WHERE id = $1", self.row.id, reason
            )
            self.cancel_reason = reason

        return record

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


def _order(r: js.RangeState) -> int:
    return r.order_value


def _refunded(decision: js.Decision) -> int:
    return sum(
        e.amount_minor
        for e in decision.effects
        if isinstance(e, js.RefundFull | js.RefundCancelShare)
    )


def _gather_reports(
    first: ReportFrame, inbox: trio.MemoryReceiveChannel[Message]
) -> tuple[list[ReportFrame], Message | None]:
    """``first`` and the frame reports right behind it in the inbox (no checkpoint); the first
    other message met is handed back, to be served next, so the order of the rest holds."""
    reports = [first]
    while len(reports) < REPORTS_PER_COMMIT:
        try:
            message = inbox.receive_nowait()
        except (trio.WouldBlock, trio.EndOfChannel):
            return reports, None
        if not isinstance(message, ReportFrame):
            return reports, message
        reports.append(message)
    return reports, None
