"""The JobActor's handlers of what nodes and its background tasks report: frames, a replica
built, a crash, work a node dropped, an output validated, the merge done (see ``job.py``).

A crash is decided in one transaction with the node's: the node's actor reads the crash
history, decides and records the crash and its own state, and runs this job's write of the
decision (:meth:`JobEffects._write_of`) before it commits; the job then takes the committed
decision and answers, before the decision's messages to nodes go out.
"""

from __future__ import annotations

from datetime import timedelta
from uuid import UUID, uuid4

import attrs
import trio

from flatrender.actors import node
from flatrender.actors.job_effects import JobEffects
from flatrender.actors.job_messages import CrashAnswer, ReplicaReady, ReportFrame
from flatrender.actors.mailbox import Reply, answer
from flatrender.actors.merger import MergedExport
from flatrender.actors.validation import OutputCheck
from flatrender.domain import job_steps as js
from flatrender.domain.crash_policy import CrashHistory, CrashVerdict, decide_crash
from flatrender.domain.model import CrashAction
from flatrender.domain.pricing import retention_days
from flatrender.domain.splitting import split
from flatrender.persistence import exports, job_state, nodes
from flatrender.persistence.db import Connection


class JobReports(JobEffects):
    """Frame reports, replica builds, crashes, dropped work, validations and merges."""

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

    async def _report_frames(self, reports: list[ReportFrame]) -> None:
        """Decide each report in turn, commit them all at once, then answer each (False when
        it is fenced: 409 ``stale_assignment``) before the decisions' other effects run. A
        repeated report is accepted and writes nothing."""
        policy = self._policy()
        state, effects = self.state, list[js.Effect]()
        rows: list[job_state.FrameReport] = []
        accepted: list[bool] = []
        first_frames: list[UUID] = []
        for message in reports:
            if self.state.range(message.range_id) is None:
                # Not this job's range: refused (the HTTP layer answers 404 for it) unlogged.
                accepted.append(False)
                continue
            event = js.FrameReported(message.range_id, message.node_id, message.frame)
            decision = js.decide(state, event, policy)
            if decision.outcome is js.Outcome.UNCHANGED:
                accepted.append(True)  # a repeated report: already recorded
                continue
            first_frames.append(message.range_id)
            state = decision.state
            effects.extend(decision.effects)
            accepted.append(not decision.fenced)
            if not decision.fenced:
                rows.append(
                    (
                        message.range_id,
                        message.frame,
                        message.node_id,
                        message.file_size_bytes,
                        message.completed_at,
                    )
                )

        def answer_all() -> None:
            now = trio.current_time()
            for range_id in first_frames:
                self._first_frame_at.setdefault(range_id, now)
            for message, ok in zip(reports, accepted, strict=True):
                answer(message.reply, ok)
            self.deps.counters.frame_reports += len(reports)

        await self._commit(
            js.Decision(state, tuple(effects)),
            reports=rows,
            on_committed=answer_all,
            wait_out=False,
        )

    async def _replica_ready(self, message: ReplicaReady) -> bool:
        if message.replica_key != job_state.replica_key(
            self.row.saved_project_id, self.row.project_version
        ):
            return False  # not the key this job issued (refused with 422 before it gets here)
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

    async def _work_dropped(self, node_id: UUID, work_id: UUID) -> None:
        if work_id == self.state.job_id:
            await self._apply(js.NodeLost(node_id))  # the replica builder: ask another node
            return
        # Like a crash that moves the range: a new attempt elsewhere (or the job fails when
        # the attempts are spent); a range already rendered is left to its validation.
        verdict = CrashVerdict(
            CrashAction.REASSIGN_WORK, True, False, "the node went idle without finishing it"
        )
        await self._apply(js.CrashDecided(work_id, node_id, verdict))

    async def _crash(self, report: nodes.CrashReport, reply: Reply) -> None:
        """Answer a crash report (a CrashAnswer, or None when fenced) as soon as its decision is
        committed, before the decision's messages to nodes go out (DESIGN 2.1 holds: the answer
        follows the commit)."""
        r = self.state.range(report.frame_job_id) if report.frame_job_id else None
        if r is None or r.node_id != report.node_id:
            answer(reply, None)
            return
        cfg = self.deps.config()
        attempt = r.attempt

        def verdict_of(recent: int, on_range: int) -> CrashVerdict:
            return decide_crash(
                CrashHistory(recent, on_range, attempt),
                max_attempts=cfg.jobs.max_attempts,
                node_restart_after=cfg.nodes.crash_restart_after,
            )

        state, policy = self.state, self._policy()

        async def decide_and_write(conn: Connection, verdict: CrashVerdict) -> _Joined:
            # In the node's transaction, while this actor waits for it: pure, then database.
            decision = js.decide(state, js.CrashDecided(r.id, report.node_id, verdict), policy)
            write = self._write_of(decision)
            return _Joined(decision, self.revision if write is None else await write(conn))

        # One commit: the node's actor reads its history, decides, records the crash and its
        # own state, and writes this job's decision in the same transaction.
        since = self.deps.clock() - timedelta(seconds=cfg.nodes.crash_window_sec)
        query = node.CrashPolicyQuery(r.id, since, verdict_of, then=decide_and_write)
        outcome: node.CrashOutcome = await self.deps.fleet.call(
            report.node_id, lambda r_: node.RecordCrash(report, r_, policy=query)
        )
        if not outcome.counted or outcome.verdict is None:
            answer(reply, CrashAnswer(CrashAction(outcome.crash.recovery_action)))
            return
        assert isinstance(outcome.joined, _Joined)
        decision, self.revision = outcome.joined.decision, outcome.joined.revision
        result = None if decision.fenced else CrashAnswer(outcome.verdict.action)
        await self._committed(decision, on_committed=lambda: answer(reply, result), wait_out=False)

    async def _validated(self, range_id: UUID, check: OutputCheck) -> None:
        async def preview(conn: Connection) -> None:
            if check.preview_b64 is not None:
                await conn.execute(
                    "UPDATE render_jobs SET image_preview_b64 = $2 WHERE id = $1",
                    self.state.job_id,
                    check.preview_b64,
                )
                self.preview_b64 = check.preview_b64

        event = js.OutputValidated(range_id, check.ok, check.error, check.width, check.height)
        await self._apply(event, also=preview)

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


@attrs.frozen
class _Joined:
    """A crash's decision, committed in the node's transaction, and the job's new revision."""

    decision: js.Decision
    revision: int
