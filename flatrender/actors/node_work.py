"""The work a NodeActor's node holds: its pending commands, the work assigned to it, and the
work it evidently dropped (a mixin of :class:`flatrender.actors.node.NodeActor`).

A node with work assigned is Busy whatever its heartbeat says (the command may not have reached
it yet); work moved or cancelled before delivery takes its command back.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any
from uuid import UUID, uuid4

import trio

from flatrender.actors.node_messages import Assign, Enqueue, NodeNotIdle
from flatrender.domain import node_status as ns
from flatrender.domain.model import CommandType, HealthSample, NodeCommand
from flatrender.persistence import nodes
from flatrender.persistence.db import Connection

if TYPE_CHECKING:
    from flatrender.actors.node import NodeDeps

log = logging.getLogger("flatrender.node")

# Commands that hand the node work (the others are instructions about work or the node).
WORK_COMMANDS = (CommandType.RENDER_FRAMES, CommandType.PREPARE_REPLICA)
# Heartbeats in a row with no job in hand after which delivered work counts as dropped.
DROP_AFTER_IDLE_BEATS = 3


class NodeWork:
    """The NodeActor's fields it uses (declared there) and its handlers of work."""

    node_id: UUID
    deps: NodeDeps
    state: ns.NodeState
    commands: list[NodeCommand]
    assigned: set[UUID]
    _idle_beats: dict[UUID, int]
    _ready_at: dict[UUID, float]
    handed_at: float | None
    last_work_sec: float | None
    last_sample: HealthSample | None

    if TYPE_CHECKING:

        async def _apply(
            self,
            event: ns.NodeEvent,
            also: Callable[[Connection], Awaitable[Any]] | None = None,
            *,
            force: bool = False,
            with_command: NodeCommand | None = None,
        ) -> None: ...

    def _dropped_work(self, sample: HealthSample) -> list[UUID]:
        """Work the node no longer has: it reports no job in hand for DROP_AFTER_IDLE_BEATS
        heartbeats in a row although the work's command was delivered and acknowledged (an
        upload that kept failing, an agent error). Such work leaves ``assigned`` here; its
        job requeues it. Work whose command still waits for the node is never counted."""
        if sample.current_job_id is not None:
            self._idle_beats.clear()
            return []
        undelivered = {_work_of(c) for c in self.commands if c.type in WORK_COMMANDS}
        dropped = []
        for work in list(self.assigned):
            if str(work) in undelivered:
                continue
            beats = self._idle_beats.get(work, 0) + 1
            self._idle_beats[work] = beats
            if beats >= DROP_AFTER_IDLE_BEATS:
                dropped.append(work)
                self.assigned.discard(work)
                del self._idle_beats[work]
        return dropped

    async def _ack(self, ids: tuple[UUID, ...]) -> None:
        wanted = set(ids) & {c.id for c in self.commands}
        if not wanted:
            return  # duplicate or stale acks are harmless
        await nodes.ack_commands(self.deps.db, self.node_id, sorted(wanted))
        self.commands = [c for c in self.commands if c.id not in wanted]

    async def _enqueue(self, message: Enqueue) -> NodeCommand | NodeNotIdle:
        command = NodeCommand(uuid4(), message.type, dict(message.payload))

        async def write(conn: Connection) -> None:
            await nodes.insert_command(conn, self.node_id, command)

        if message.type is CommandType.UPDATE_SOFTWARE:
            if not self.state.schedulable(self.deps.clock()):
                return NodeNotIdle(f"node {self.node_id} is {self.state.status.value}")
            await self._apply(ns.UpdateSent(self.deps.clock()), write, force=True)
        else:
            await nodes.insert_command(self.deps.db, self.node_id, command)
        self.commands.append(command)
        log.info("node %s: queued %s %s", self.node_id, command.type.value, command.id)
        return command

    async def _assign(self, message: Assign) -> NodeCommand | NodeNotIdle:
        if not self.state.schedulable(self.deps.clock()):
            return NodeNotIdle(f"node {self.node_id} is {self.state.status.value}")
        command = NodeCommand(uuid4(), message.type, dict(message.payload))
        await self._apply(ns.WorkAssigned(busy=True), with_command=command)
        self.assigned.add(message.work_id)
        self.commands.append(command)
        self.handed_at = trio.current_time()
        if message.ready_at is not None:
            self._ready_at[command.id] = message.ready_at
        return command

    def _delivered(self, now: float) -> None:
        """The pending commands just left in a heartbeat answer: their dispatch is over."""
        for c in self.commands:
            ready_at = self._ready_at.pop(c.id, None)
            if ready_at is not None:
                self.deps.counters.dispatch.observe(now - ready_at)

    async def _unassign(self, work_id: UUID, succeeded: bool) -> None:
        if work_id not in self.assigned:
            return  # already released (node lost, restarted, or a repeated message)
        self.assigned.discard(work_id)
        if not succeeded:
            # Moved or cancelled before the node got it: take the command back.
            await self._withdraw(lambda c: _work_of(c) == str(work_id))
        if succeeded:
            if self.handed_at is not None:
                self.last_work_sec = trio.current_time() - self.handed_at
            await self._apply(ns.WorkSucceeded())
        if not self.assigned:
            reported = self.last_sample is not None and self.last_sample.current_job_id is not None
            await self._apply(ns.WorkAssigned(busy=reported))

    async def _withdraw(self, which: Callable[[NodeCommand], bool]) -> None:
        """Take back commands not yet acknowledged (recorded as acknowledged: never delivered)."""
        gone = [c for c in self.commands if c.type in WORK_COMMANDS and which(c)]
        if gone:
            await nodes.ack_commands(self.deps.db, self.node_id, [c.id for c in gone])
            self.commands = [c for c in self.commands if c not in gone]
            for c in gone:
                self._ready_at.pop(c.id, None)


def _work_of(command: NodeCommand) -> str:
    """The work a RenderFrames (its range) or PrepareReplica (its job) command carries."""
    return str(command.payload.get("frame_job_id") or command.payload.get("job_id"))
