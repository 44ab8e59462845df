"""RolloutActor: carries node software updates out, stage by stage (``domain.rollout``).

Owns nothing but its schedule: every fact lives in PostgreSQL, so a restarted actor simply goes
on from the rows. Each round (every ``[updates] tick_sec``, or at once after :meth:`wake`) it
reads the updates in their queue (one query when there are none), then per update: reads the
rollout rows with their nodes' versions and readiness, the crashes since the first confirmation,
asks :func:`domain.rollout.decide`, and performs the decision — confirmations, a halt, or
``UpdateSoftware`` commands with a fresh presigned download url through the node's actor (which
alone may refuse: a node that is not idle answers ``NodeNotIdle`` and stays queued).

The command is committed by the node's actor before the row becomes ``Sent``: after a crash in
between, the row is still ``Queued`` and the node, now ``Updating``, refuses a second command.
A database or object-storage outage skips the update for this round (logged) and is retried on
the next; anything else is a bug and ends the actor, which its supervisor restarts.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import datetime
from uuid import UUID

import attrs
import trio

from flatrender.actors import node
from flatrender.actors.fleet import Fleet, NodeUnknown
from flatrender.actors.mailbox import MESSAGE_ERRORS, ActorUnavailable
from flatrender.clock import utc_now
from flatrender.config import Config, UpdatesConfig
from flatrender.domain import rollout
from flatrender.domain.model import CommandType
from flatrender.persistence import updates
from flatrender.persistence.db import Database, DatabaseUnavailable
from flatrender.storage import ObjectStore, StorageUnavailable

log = logging.getLogger("flatrender.rollout")

S = rollout.RolloutStatus


def rollout_policy(config: UpdatesConfig) -> rollout.RolloutPolicy:
    return rollout.RolloutPolicy(
        stage1_fraction=config.stage1_fraction,
        observe_sec=float(config.observe_sec),
        crash_rate_factor=config.crash_rate_factor,
        min_crash_rate_per_hour=config.min_crash_rate_per_hour,
        min_crashes=config.min_crashes,
        confirm_timeout_sec=float(config.confirm_timeout_sec),
    )


@attrs.define
class TickReport:
    """What one round did (node ids per update are not kept: the log has them)."""

    updates: int = 0
    sent: list[UUID] = attrs.Factory(list)
    confirmed: list[UUID] = attrs.Factory(list)
    failed: list[UUID] = attrs.Factory(list)
    halted: list[UUID] = attrs.Factory(list)  # update ids
    finished: list[UUID] = attrs.Factory(list)  # update ids
    skipped: list[UUID] = attrs.Factory(list)  # update ids left for the next round (outage)


class RolloutActor:
    """``RolloutActor(db, fleet, store, config, clock)``; run it as a PERMANENT child."""

    def __init__(
        self,
        db: Database,
        fleet: Fleet,
        store: ObjectStore,
        config: Callable[[], Config],
        clock: Callable[[], datetime] = utc_now,
    ) -> None:
        self.db = db
        self.fleet = fleet
        self.store = store
        self.config = config
        self.clock = clock
        self._wake = trio.Event()

    async def run(
        self, *, task_status: trio.TaskStatus[RolloutActor] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """A round at once, then one every ``tick_sec`` (sooner after `wake`); never returns."""
        task_status.started(self)
        while True:
            next_round = trio.current_time() + self.config().updates.tick_sec
            # A wake during this round asks for another one straight after it.
            self._wake = trio.Event()
            await self.tick()
            with trio.move_on_at(next_round):
                await self._wake.wait()

    def wake(self) -> None:
        """Start the next round now (a rollout was just queued); safe to call from anywhere."""
        self._wake.set()

    async def tick(self) -> TickReport:
        """One round over every update in its queue; outages are logged, never raised."""
        report = TickReport()
        try:
            pending = await updates.pending(self.db)
        except DatabaseUnavailable as e:
            log.warning("rollout round skipped, database unavailable: %s", e)
            return report
        report.updates = len(pending)
        for update in pending:
            try:
                await self._advance(update, report)
            except (DatabaseUnavailable, StorageUnavailable) as e:
                report.skipped.append(update.id)
                log.warning("rollout of update #%d paused: %s", update.update_number, e)
            except MESSAGE_ERRORS as e:
                # One update's data, refused every round: it must not stop the others (nor
                # crash the actor in a loop); an operator halts or fixes it.
                report.skipped.append(update.id)
                log.error("rollout of update #%d refused: %s", update.update_number, e)
        return report

    async def _advance(self, update: updates.Pending, report: TickReport) -> None:
        now = self.clock()
        policy = rollout_policy(self.config().updates)
        stem = rollout.version_stem(update.update_file_name)
        targets, wave_at = await updates.targets(self.db, update.id, now)
        crashes: list[rollout.Crash] = []
        start = rollout.observation_start(targets)
        if update.in_update_queue and start is not None:
            wave = [t.node_id for t in rollout.wave_of(targets)]
            crashes = await updates.crashes_since(self.db, wave, start)
        decision = rollout.decide(
            stem, targets, crashes, now, policy, active=update.in_update_queue
        )
        await self._confirm(update, decision, now, report)
        if decision.halt is not None:
            if await updates.halt(self.db, update.id, wave_at, decision.halt, decision.timed_out):
                report.failed += decision.timed_out
                report.halted.append(update.id)
                log.warning(
                    "rollout of update #%d (%s) halted: %s",
                    update.update_number,
                    update.update_file_name,
                    decision.halt,
                )
            return
        if decision.timed_out:
            failed = await updates.mark_failed(self.db, update.id, decision.timed_out, S.SENT)
            report.failed += failed
            for node_id in failed:
                log.warning(
                    "node %s never confirmed update #%d (%s)", node_id, update.update_number, stem
                )
        for node_id in decision.send:
            await self._send(update, node_id, now, report)
        if decision.done and await updates.finish(self.db, update.id, wave_at):
            report.finished.append(update.id)
            log.info("rollout of update #%d (%s) complete", update.update_number, stem)

    async def _confirm(
        self,
        update: updates.Pending,
        decision: rollout.Decision,
        now: datetime,
        report: TickReport,
    ) -> None:
        for ids, was in ((decision.confirm, S.SENT), (decision.adopt, S.QUEUED)):
            if not ids:
                continue
            done = await updates.mark_confirmed(self.db, update.id, ids, now, was)
            report.confirmed += done
            for node_id in done:
                log.info("node %s runs update #%d", node_id, update.update_number)

    async def _send(
        self, update: updates.Pending, node_id: UUID, now: datetime, report: TickReport
    ) -> None:
        payload: dict[str, object] = {
            "update_id": str(update.id),
            "update_file_name": update.update_file_name,
            "download_url": await self.store.presign_get(update.storage_key),
        }
        try:
            answer = await self.fleet.call(
                node_id, lambda reply: node.Enqueue(CommandType.UPDATE_SOFTWARE, payload, reply)
            )
        except NodeUnknown:
            failed = await updates.mark_failed(self.db, update.id, [node_id], S.QUEUED)
            report.failed += failed
            log.warning("update #%d: node %s is unknown, skipped", update.update_number, node_id)
            return
        except (node.NodeNotIdle, ActorUnavailable):
            # Not idle after all, or restarting: still Queued, tried again next round.
            # (The node actor answers NodeNotIdle; ``mailbox.call`` raises an exception answer.)
            return
        if isinstance(answer, node.NodeNotIdle):
            return
        if await updates.mark_sent(self.db, update.id, node_id, now):
            report.sent.append(node_id)
            log.info("update #%d sent to node %s", update.update_number, node_id)
        else:
            log.warning(
                "update #%d: node %s was no longer queued when its command was sent",
                update.update_number,
                node_id,
            )
