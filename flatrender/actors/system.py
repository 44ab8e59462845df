"""The actor system: the root supervisor under which every long-lived actor runs (DESIGN §1).

Later parts add their supervisors and singletons (node supervisor, job supervisor, scheduler,
progress hub, health writer, merger, reaper) as children of ``root`` with their own ChildSpec.
"""

from __future__ import annotations

import logging

import trio

from flatrender.actors.supervisor import ChildSpec, RestartPolicy, Supervisor

log = logging.getLogger("flatrender.actors")


class ActorSystem:
    """Owns the root supervisor; ``await nursery.start(system.run)`` returns once it is ready."""

    def __init__(self, policy: RestartPolicy | None = None) -> None:
        self.root = Supervisor(policy, name="root")
        self._scope = trio.CancelScope()
        self._done = trio.Event()

    async def run(
        self, *, task_status: trio.TaskStatus[ActorSystem] = trio.TASK_STATUS_IGNORED
    ) -> None:
        try:
            with self._scope:
                async with trio.open_nursery() as nursery:
                    await nursery.start(self.root.run)
                    task_status.started(self)
        finally:
            self._done.set()

    async def start(self, spec: ChildSpec) -> object:
        """Start a top-level actor under the root supervisor and return its handle."""
        return await self.root.start_child(spec)

    async def drain(self) -> None:
        """Stop every actor; each one's persisted state is the truth it restarts from."""
        self._scope.cancel()
        await self._done.wait()
        log.info("actor system stopped")
