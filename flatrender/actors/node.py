"""NodeActor: one per render node, the only writer of that node's status (DESIGN §1, §3).

It owns the node's status, its heartbeat deadline and its pending commands. Every change is
committed to PostgreSQL before the actor answers the message that caused it (DESIGN §2.1).
Heartbeat measurements go to the HealthWriter in batches, so a heartbeat that changes nothing
anyone reads costs no write of its own. The bookkeeping of the work the node holds (commands,
assignments, acknowledgements) is :mod:`flatrender.actors.node_work`'s.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Any, Protocol
from uuid import UUID, uuid4

import attrs
import trio

from flatrender import logs
from flatrender.actors.health_writer import check_sample
from flatrender.actors.mailbox import MESSAGE_ERRORS, answer, fail, refuse
from flatrender.actors.node_messages import Assign as Assign
from flatrender.actors.node_messages import CacheChanged as CacheChanged
from flatrender.actors.node_messages import CrashOutcome as CrashOutcome
from flatrender.actors.node_messages import CrashPolicyQuery as CrashPolicyQuery
from flatrender.actors.node_messages import Enqueue as Enqueue
from flatrender.actors.node_messages import Heartbeat as Heartbeat
from flatrender.actors.node_messages import HeartbeatAnswer as HeartbeatAnswer
from flatrender.actors.node_messages import Inspect as Inspect
from flatrender.actors.node_messages import Message as Message
from flatrender.actors.node_messages import NodeNotIdle as NodeNotIdle
from flatrender.actors.node_messages import NodePatch as NodePatch
from flatrender.actors.node_messages import NodeView as NodeView
from flatrender.actors.node_messages import Online as Online
from flatrender.actors.node_messages import Patch as Patch
from flatrender.actors.node_messages import RecordCrash as RecordCrash
from flatrender.actors.node_messages import Unassign as Unassign
from flatrender.actors.node_work import DROP_AFTER_IDLE_BEATS as DROP_AFTER_IDLE_BEATS
from flatrender.actors.node_work import WORK_COMMANDS as WORK_COMMANDS
from flatrender.actors.node_work import NodeWork
from flatrender.domain import node_status as ns
from flatrender.domain.model import CommandType, CrashAction, HealthSample, NodeCommand
from flatrender.metrics import Counters
from flatrender.persistence import nodes
from flatrender.persistence.db import Connection, Database

log = logging.getLogger("flatrender.node")

INBOX_SIZE = 64


async def _nothing() -> None:
    return None


@attrs.define
class Liveness:
    """When node deadlines may fire (DESIGN §8): a node is declared Offline only after a full
    ``heartbeat_timeout_sec`` from the daemon's readiness, and never once shutdown began.

    Read lazily by each actor when its deadline comes, so readiness and the freeze need no
    message to thousands of actors.
    """

    # trio time the daemon became ready: the actor system marks it once every actor is up and
    # the daemon again once it serves requests (the later one counts); None while it starts.
    ready_at: float | None = None
    frozen: bool = False

    def ready(self) -> None:
        self.ready_at = trio.current_time()

    def freeze(self) -> None:
        self.frozen = True

    def hold_until(self, timeout_sec: float) -> float | None:
        """The later deadline a due node gets instead of going Offline, or None: it may."""
        if self.frozen:
            return math.inf
        if self.ready_at is None:
            return trio.current_time() + timeout_sec
        if trio.current_time() < self.ready_at + timeout_sec:
            return self.ready_at + timeout_sec
        return None


class SampleSink(Protocol):
    def submit(self, sample: HealthSample) -> bool: ...


@attrs.frozen
class NodeDeps:
    """What every node actor needs; ``policy`` is read per message so SIGHUP applies at once."""

    db: Database
    samples: SampleSink
    policy: Callable[[], ns.NodePolicy]
    clock: Callable[[], datetime]
    # Called when a node's ranges are lost (dead or restarted); the job system requeues them.
    on_lost: Callable[[UUID, str], Awaitable[None]]
    # Called with work the node evidently dropped (alive, idle, its command long delivered).
    on_dropped: Callable[[UUID, list[UUID]], Awaitable[None]] = lambda node, work: _nothing()
    # The scheduler: whether work waits that this node may take, and a nudge when a node
    # becomes Idle.
    work_waiting: Callable[[UUID], bool] = lambda node_id: False
    fleet_size: Callable[[], int] = lambda: 1
    node_idle: Callable[[], None] = lambda: None
    # Told every committed status change (the ProgressHub's admin topic); must not block.
    status_changed: Callable[[UUID, str], None] = lambda node, status: None
    counters: Counters = attrs.Factory(Counters)
    # Readiness and the shutdown freeze: whether a due deadline may declare a node Offline.
    liveness: Liveness = attrs.field(factory=Liveness)


# ------------------------------------------------------------------ the actor


@attrs.define
class NodeActor(NodeWork):
    node_id: UUID
    deps: NodeDeps
    state: ns.NodeState
    commands: list[NodeCommand]
    md5s: tuple[str, ...]
    # Work given to the node and not yet finished: while any is held the node is Busy, whatever
    # its heartbeat says (the command may not have reached it yet).
    assigned: set[UUID] = attrs.Factory(set)
    _idle_beats: dict[UUID, int] = attrs.Factory(dict)
    # Work commands not yet delivered, with when their work became ready (dispatch latency).
    _ready_at: dict[UUID, float] = attrs.Factory(dict)
    last_sample: HealthSample | None = None
    deadline: float = math.inf
    # When (trio time) the node was last handed work, and how long its last finished piece of
    # work took from then: a node on short work heartbeats sooner.
    handed_at: float | None = None
    last_work_sec: float | None = None

    @classmethod
    async def run(
        cls,
        deps: NodeDeps,
        node_id: UUID,
        preloaded: tuple[nodes.NodeRow, list[NodeCommand], set[UUID]] | None = None,
        *,
        task_status: trio.TaskStatus[trio.MemorySendChannel[Message]],
    ) -> None:
        """Rebuild from PostgreSQL (or rows loaded in bulk at start-up), then serve messages.

        A live node gets a fresh deadline: it proves itself alive with its next heartbeat, and
        is given a full timeout from the daemon's readiness for it (:class:`Liveness`).
        """
        if preloaded is None:
            row = await nodes.get(deps.db, node_id)
            if row is None:
                raise LookupError(f"node {node_id} no longer exists")
            commands = await nodes.pending_commands(deps.db, node_id)
            assigned = await nodes.assigned_work(deps.db, node_id)
        else:
            row, commands, assigned = preloaded
        actor = cls(
            node_id, deps, row.state, list(commands), tuple(row.cached_template_md5s), set(assigned)
        )
        if row.status is not ns.S.OFFLINE:
            # A fresh deadline, as long as the interval this fleet's size makes nodes use.
            policy = deps.policy()
            interval = ns.shed_interval(
                policy.heartbeat_interval_sec, deps.fleet_size(), policy.max_heartbeats_per_sec
            )
            actor.deadline = trio.current_time() + ns.heartbeat_deadline(policy, interval)
        send, recv = trio.open_memory_channel[Message](INBOX_SIZE)
        task_status.started(send)
        await actor.serve(recv)

    async def serve(self, inbox: trio.MemoryReceiveChannel[Message]) -> None:
        async with inbox:
            while True:
                message: Message | None = None
                # Only the wait is bounded by the deadline, never the handling of a message.
                with trio.move_on_at(self.deadline):
                    message = await inbox.receive()
                if message is None:
                    held = self.deps.liveness.hold_until(self.deps.policy().heartbeat_timeout_sec)
                    if held is not None:
                        self.deadline = held
                        continue
                    self.deadline = math.inf
                    await self._apply(ns.DeadlineExpired(self.deps.clock()))
                else:
                    await self._handle(message)

    async def _handle(self, message: Message) -> None:
        """Handle one message. One whose data is refused (``MESSAGE_ERRORS``) is answered with
        the error and the actor goes on: every change is committed before it is made here, so
        a refused commit leaves the state as it was. Anything else crashes the actor."""
        try:
            await self._dispatch(message)
        except MESSAGE_ERRORS as e:
            refuse(f"node {self.node_id}", message, message.reply, e)
        except BaseException:
            fail(message.reply)
            raise

    async def _dispatch(self, message: Message) -> None:
        match message:
            case Heartbeat():
                answer(message.reply, await self._heartbeat(message))
                self.deps.counters.heartbeats += 1
            case Online(info=info):
                now = self.deps.clock()

                async def write(conn: Connection) -> None:
                    await nodes.save_online(conn, self.node_id, info, now)

                await self._apply(ns.Online(now), write)
                # A restarted agent holds no work (a lost node's was requeued by the effects).
                self.assigned.clear()
                self.md5s = tuple(info.cached_template_md5s)
                self.deadline = trio.current_time() + self.deps.policy().heartbeat_timeout_sec
                log.info(
                    "node %s online (agent %s, AE %s)",
                    self.node_id,
                    info.node_agent_version,
                    info.current_ae_version,
                    extra=logs.about(node_id=self.node_id),
                )
                answer(message.reply, None)
            case CacheChanged(action=action, md5=md5, cache_used_gb=used):
                md5s = set(self.md5s)
                if action in ("Downloaded", "Verified"):
                    md5s.add(md5)
                elif action == "Evicted":
                    md5s.discard(md5)
                else:
                    log.warning("node %s failed to cache template %s", self.node_id, md5)
                cached = tuple(sorted(md5s))
                await nodes.save_cache(self.deps.db, self.node_id, list(cached), used)
                self.md5s = cached
                answer(message.reply, None)
            case Enqueue():
                answer(message.reply, await self._enqueue(message))
            case Assign():
                answer(message.reply, await self._assign(message))
            case Unassign(work_id=work_id, succeeded=succeeded):
                await self._unassign(work_id, succeeded)
                answer(message.reply, None)
            case RecordCrash(report=report, action=action, policy=policy):
                answer(message.reply, await self._record_crash(report, action, policy))
            case Patch(patch=patch):
                await self._patch(patch)
                answer(message.reply, None)
            case Inspect():
                answer(message.reply, NodeView(self.state, self.last_sample, tuple(self.commands)))
            case _:
                log.error("node %s: unknown message %r", self.node_id, message)
                raise AssertionError(f"unknown message {message!r}")

    async def _heartbeat(self, message: Heartbeat) -> HeartbeatAnswer:
        check_sample(message.sample)  # refused before anything changes, not after
        policy = self.deps.policy()
        if message.acked:
            await self._ack(message.acked)
        sample = message.sample
        dropped = self._dropped_work(sample)
        busy = sample.current_job_id is not None or bool(self.assigned)
        await self._apply(ns.Heartbeat(self.deps.clock(), busy=busy))
        status = self.state.status.value
        if sample.status != status:
            sample = attrs.evolve(sample, status=status)
        self.last_sample = sample
        self.deps.samples.submit(self.last_sample)
        waiting = self.state.status is ns.S.IDLE and self.deps.work_waiting(self.node_id)
        now = trio.current_time()
        interval = ns.heartbeat_interval(
            self.state,
            waiting,
            policy,
            self.deps.fleet_size(),
            work_unacked=any(c.type in WORK_COMMANDS for c in self.commands),
            handed_work_sec_ago=None if self.handed_at is None else now - self.handed_at,
            last_work_sec=self.last_work_sec,
        )
        self.deadline = trio.current_time() + ns.heartbeat_deadline(policy, interval)
        if self._ready_at:
            self._delivered(now)
        if dropped:
            log.warning(
                "node %s is idle but held %d piece(s) of work: released", self.node_id, len(dropped)
            )
            await self.deps.on_dropped(self.node_id, dropped)
        return HeartbeatAnswer(interval, tuple(self.commands))

    async def _record_crash(
        self, report: nodes.CrashReport, action: CrashAction, policy: CrashPolicyQuery | None
    ) -> CrashOutcome | Exception:
        decision = ns.decide(self.state, ns.CrashCounted(self.deps.clock()), self.deps.policy())
        node_id = self.node_id

        async def write(conn: Connection) -> CrashOutcome:
            # On the asyncio side, one bridge crossing: database calls and pure decisions only.
            verdict = None
            stored = action
            if policy is not None:
                recent, on_range = await nodes.crash_history(
                    conn, node_id, policy.range_id, policy.since
                )
                verdict = policy.decide(recent, on_range)
                stored = verdict.action
            row = await nodes.record_crash(conn, uuid4(), report, stored.value)
            if row is None:
                existing = await nodes.find_crash(conn, report)
                assert existing is not None
                return CrashOutcome(existing, counted=False)
            await nodes.save_state(conn, node_id, decision.state)
            joined = None
            if policy is not None and policy.then is not None and verdict is not None:
                joined = await policy.then(conn, verdict)
            return CrashOutcome(row, counted=True, verdict=verdict, joined=joined)

        try:
            outcome = await self.deps.db.atomic(write)
        except Exception as e:
            if policy is None or policy.then is None:
                raise
            # The joint transaction rolled back and this node's state is unchanged: the job's
            # actor (whose write may be what failed) gets the error, this actor carries on.
            return e
        if outcome.counted:
            self.deps.counters.crash_reports += 1
            self._set_state(decision.state, "crash reported")
        return outcome

    async def _patch(self, patch: NodePatch) -> None:
        event = ns.AdminPatch(
            self.deps.clock(),
            is_active=patch.is_active,
            accepts_new_jobs=patch.accepts_new_jobs,
            next_maintenance_at=patch.next_maintenance_at,
        )

        async def write(conn: Connection) -> None:
            row = await conn.fetchrow(
                "SELECT priority, node_kind, owner_user_id, maintenance_reason FROM nodes "
                "WHERE id = $1 FOR UPDATE",
                self.node_id,
            )
            owner = row["owner_user_id"] if patch.owner_user_id is ns.UNSET else patch.owner_user_id
            await nodes.save_admin_fields(
                conn,
                self.node_id,
                row["priority"] if patch.priority is None else patch.priority,
                row["node_kind"] if patch.node_kind is None else patch.node_kind,
                owner,  # type: ignore[arg-type]
                row["maintenance_reason"]
                if patch.maintenance_reason is None
                else patch.maintenance_reason,
            )

        await self._apply(event, write, force=True)

    async def _apply(
        self,
        event: ns.NodeEvent,
        also: Callable[[Connection], Awaitable[Any]] | None = None,
        *,
        force: bool = False,
        with_command: NodeCommand | None = None,
    ) -> None:
        """Decide, commit (with ``also`` in the same transaction, or ``with_command`` inserted
        in the same statement), then act on the effects."""
        decision = ns.decide(self.state, event, self.deps.policy())
        if with_command is not None and also is None:
            await nodes.save_state_with_command(
                self.deps.db, self.node_id, decision.state, with_command
            )
        elif (
            also is not None
            or force
            or (
                decision.state is not self.state
                and _persisted(decision.state) != _persisted(self.state)
            )
        ):

            async def write(conn: Connection) -> None:
                # On the asyncio side, one bridge crossing: database calls only.
                if also is not None:
                    await also(conn)
                await nodes.save_state(conn, self.node_id, decision.state)

            await self.deps.db.atomic(write)
        self._set_state(decision.state, type(event).__name__)
        for effect in decision.effects:
            await self._perform(effect)

    def _set_state(self, new: ns.NodeState, why: str) -> None:
        if new.status is not self.state.status:
            log.info(
                "node %s: %s -> %s (%s)",
                self.node_id,
                self.state.status.value,
                new.status.value,
                why,
                extra=logs.about(node_id=self.node_id),
            )
            if new.status is ns.S.IDLE:
                self.deps.node_idle()
            self.deps.status_changed(self.node_id, new.status.value)
        self.state = new

    async def _perform(self, effect: ns.Effect) -> None:
        match effect:
            case ns.DropAssignments(reason=reason):
                log.warning(
                    "node %s lost its work: %s",
                    self.node_id,
                    reason,
                    extra=logs.about(node_id=self.node_id),
                )
                self.assigned.clear()
                # Its ranges are requeued: their commands must not reach it when it is back.
                await self._withdraw(lambda c: c.type in WORK_COMMANDS)
                await self.deps.on_lost(self.node_id, reason)
            case ns.ReleaseStaleWork():
                command = NodeCommand(uuid4(), CommandType.RELEASE, {})
                await nodes.insert_command(self.deps.db, self.node_id, command)
                self.commands.append(command)
                log.info("node %s came back with stale work: Release queued", self.node_id)


def _persisted(state: ns.NodeState) -> ns.NodeState:
    # `busy` is derived from what the node reports; it is not a column of its own.
    return attrs.evolve(state, busy=False)
