"""The JobActor's messages to nodes: work offered (answered), and the ordered outbox of the
messages a committed decision sends (release, cancel, trim) (a mixin of ``JobEffects``).

The outbox task sends them one at a time in order, so that a crash or frame report right
behind the decision is served meanwhile; every other message waits until they are out
(:meth:`JobNodes._drain`).
"""

from __future__ import annotations

import functools
import logging
import math
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any
from uuid import UUID

import trio

from flatrender.actors import node
from flatrender.actors.fleet import NodeUnknown
from flatrender.actors.mailbox import MESSAGE_ERRORS, ActorUnavailable
from flatrender.domain import job_steps as js
from flatrender.domain.model import CommandType

if TYPE_CHECKING:
    from flatrender.actors.job_effects import JobDeps

log = logging.getLogger("flatrender.job")

# A node that cannot be told now (gone, restarting) or that refused the message's data: the
# outbox logs it and goes on; the node's next heartbeats and the job's fencing settle the rest.
_NOT_TOLD: tuple[type[Exception], ...] = (NodeUnknown, ActorUnavailable, *MESSAGE_ERRORS)


class JobNodes:
    deps: JobDeps
    state: js.JobState

    def _open_outbox(self) -> None:
        # Messages to nodes that a committed decision sends (release, cancel, trim), sent in
        # order by the outbox task so that a crash or frame report right behind the decision
        # is served meanwhile; every other message waits until they are out (_drain).
        self._out_send, self._out_recv = trio.open_memory_channel[Callable[[], Awaitable[None]]](
            math.inf
        )
        self._out_pending = 0
        self._out_idle = trio.Event()
        self._out_idle.set()

    def _later(self, send: Callable[..., Awaitable[None]], *args: Any, **kwargs: Any) -> None:
        """Queue a message to a node for the outbox task (in order, after the ones queued)."""
        self._out_pending += 1
        if self._out_idle.is_set():
            self._out_idle = trio.Event()
        self._out_send.send_nowait(functools.partial(send, *args, **kwargs))

    async def _send_out(self) -> None:
        """The outbox task: send the queued messages to nodes one at a time, in order (whoever
        starts it sets ``_out_task`` first)."""
        async for send in self._out_recv:
            await self._sent(send)

    async def _sent(self, send: Callable[[], Awaitable[None]]) -> None:
        try:
            await send()
        finally:
            self._out_pending -= 1
            if self._out_pending == 0:
                self._out_idle.set()

    async def _drain(self) -> None:
        """Wait until every message queued for nodes is sent (sent here, with no outbox task:
        a JobEffects used on its own)."""
        if not self._out_task:
            while self._out_pending:
                await self._sent(self._out_recv.receive_nowait())
        if self._out_pending:
            await self._out_idle.wait()

    _out_task = False

    async def _give_node(
        self,
        node_id: UUID,
        work_id: UUID,
        kind: CommandType,
        payload: dict[str, object],
        ready_at: float | None = None,
    ) -> bool:
        try:
            await self.deps.fleet.call(
                node_id, lambda reply: node.Assign(work_id, kind, payload, reply, ready_at)
            )
        except (node.NodeNotIdle, NodeUnknown, ActorUnavailable):
            return False
        except MESSAGE_ERRORS as e:
            # Declined like a busy node: an offer made side by side with others (a batch of
            # ranges) must not fail theirs, which their nodes may have committed already.
            log.warning("job %s: node %s refused %s: %s", self.state.job_id, node_id, kind.value, e)
            return False
        return True

    async def _tell_node(
        self, node_id: UUID, kind: CommandType, payload: dict[str, object]
    ) -> None:
        try:
            await self.deps.fleet.call(node_id, lambda reply: node.Enqueue(kind, payload, reply))
        except _NOT_TOLD as e:
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
        except _NOT_TOLD as e:
            log.warning("job %s: could not release node %s: %s", self.state.job_id, node_id, e)

    async def _release_all_nodes(self) -> None:
        for r in self.state.ranges:
            if r.node_id is not None:
                await self._unassign(
                    r.node_id, r.id, succeeded=r.status is js.RangeStatus.VALIDATED
                )
