"""The node supervisor: one NodeActor per registered node, and the routing to them.

Owns a Supervisor whose children are the node actors (one-for-one, PERMANENT). At start it
loads every node and its pending commands in two queries, so a daemon restart with thousands of
nodes is ready in moments; a restarted actor reloads its own node alone.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from typing import Any
from uuid import UUID

import trio

from flatrender.actors import mailbox, node
from flatrender.actors.supervisor import (
    ChildSpec,
    ChildUnavailable,
    Restart,
    Supervisor,
    SupervisorStatistics,
)
from flatrender.domain.model import CommandType, NodeCommand
from flatrender.persistence import nodes
from flatrender.persistence.db import Database

log = logging.getLogger("flatrender.fleet")

LOAD_ALL = "SELECT * FROM nodes ORDER BY created_at"
LOAD_ASSIGNED = """
SELECT node_id, id FROM frame_jobs
WHERE node_id IS NOT NULL AND status IN ('Assigned', 'Rendering', 'Rendered')
"""
LOAD_PENDING = """
SELECT id, node_id, type, payload FROM node_commands WHERE acked_at IS NULL ORDER BY created_at, id
"""


Preloaded = dict[UUID, list[NodeCommand]]
Held = dict[UUID, set[UUID]]


class NodeUnknown(LookupError):
    """No such node (never registered, or its actor is gone)."""


class Fleet:
    def __init__(self, deps: node.NodeDeps) -> None:
        self.deps = deps
        self._supervisor: Supervisor | None = None
        self._loaded = 0

    async def run(self, *, task_status: trio.TaskStatus[Fleet] = trio.TASK_STATUS_IGNORED) -> None:
        """Start every node's actor, then publish self; a fresh supervisor per incarnation."""
        supervisor = Supervisor(name="nodes")
        async with trio.open_nursery() as nursery:
            await nursery.start(supervisor.run)
            rows, commands, assigned = await self._load_all(self.deps.db)
            self._loaded = len(rows)
            for row in rows:
                preloaded = (row, commands[row.id], assigned[row.id])
                await supervisor.start_child(self._spec(row.id, preloaded))
            self._supervisor = supervisor
            log.info("fleet up: %d node actors", len(rows))
            task_status.started(self)
            try:
                await trio.sleep_forever()
            finally:
                self._supervisor = None

    @staticmethod
    async def _load_all(db: Database) -> tuple[list[nodes.NodeRow], Preloaded, Held]:
        rows = [nodes.row_from_record(r) for r in await db.fetch(LOAD_ALL)]
        commands: Preloaded = defaultdict(list)
        for r in await db.fetch(LOAD_PENDING):
            commands[r["node_id"]].append(
                NodeCommand(r["id"], CommandType(r["type"]), r["payload"])
            )
        assigned: Held = defaultdict(set)
        for r in await db.fetch(LOAD_ASSIGNED):
            assigned[r["node_id"]].add(r["id"])
        return rows, commands, assigned

    def _spec(
        self, node_id: UUID, preloaded: tuple[nodes.NodeRow, list[NodeCommand], set[UUID]] | None
    ) -> ChildSpec:
        first = [preloaded]

        async def factory(*, task_status: trio.TaskStatus[Any]) -> None:
            # Bulk-loaded rows serve the first incarnation only; a restart reads fresh state.
            loaded, first[0] = first[0], None
            await node.NodeActor.run(self.deps, node_id, loaded, task_status=task_status)

        return ChildSpec(id=str(node_id), factory=factory, restart=Restart.PERMANENT)

    def statistics(self) -> SupervisorStatistics:
        """Each running actor's state and restart count; none while the supervisor is down."""
        supervisor = self._supervisor
        return SupervisorStatistics({}) if supervisor is None else supervisor.statistics()

    def size(self) -> int:
        """Registered nodes (known from the start-up load on, before every actor runs)."""
        supervisor = self._supervisor
        running = 0 if supervisor is None else supervisor.child_count()
        return max(running, self._loaded)

    def knows(self, node_id: UUID) -> bool:
        supervisor = self._supervisor
        return supervisor is not None and supervisor.has_child(str(node_id))

    async def call(self, node_id: UUID, make: Any, within_sec: float = 5.0) -> Any:
        """Send ``make(reply)`` to the node's actor and return its answer."""
        supervisor = self._supervisor
        if supervisor is None:
            raise mailbox.ActorUnavailable("the fleet is not running")
        try:
            inbox = supervisor.handle(str(node_id))
        except KeyError:
            raise NodeUnknown(str(node_id)) from None
        except ChildUnavailable:
            raise mailbox.ActorUnavailable(f"node {node_id} is restarting") from None
        return await mailbox.call(inbox, make, within_sec)

    async def register(self, node_id: UUID, new: nodes.NewNode) -> nodes.NodeRow:
        """Insert the node (committed first), then start its actor."""
        supervisor = self._supervisor
        if supervisor is None:
            raise mailbox.ActorUnavailable("the fleet is not running")
        row = await nodes.insert(self.deps.db, node_id, new)
        await supervisor.start_child(self._spec(node_id, (row, [], set())))
        log.info("node %s registered as %r in %s", node_id, new.name, new.region)
        return row
