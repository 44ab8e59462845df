"""One simulated render node: goes online, heartbeats, executes the commands it is given.

Life of a node (``SimNode.run``): *boot* (``online``) → a *session* of two tasks, the heartbeat
loop (which receives and dispatches commands) and the work loop (which runs ``RenderFrames`` and
``PrepareReplica`` one at a time, in order) → on ``Restart``, ``UpdateSoftware`` or a crash
answer ``RestartNode``, the session is cancelled, the node is silent for ``restart_delay``
seconds and boots again. ``--die-after`` cancels everything at once: no call leaves afterwards.

State that lives on the node's disk survives a reboot (the template cache, the ids of commands
already received and not yet acknowledged); work and the AE process do not.
"""

from __future__ import annotations

import logging
import math
import random
import tempfile
from pathlib import Path
from typing import Any
from uuid import UUID

import attrs
import httpx
import trio

from flatrender.agent import commands as c
from flatrender.agent.client import (
    Backoff,
    Reply,
    SignedClient,
    TransferFailed,
    Unavailable,
    get_bytes,
    utc_now,
)
from flatrender.agent.faults import FaultPlanner
from flatrender.agent.options import AgentOptions
from flatrender.agent.render import AeProcess, Outcome, RenderSettings, render_range
from flatrender.agent.replica import TemplateCache, prepare_replica
from flatrender.agent.work import RangeProgress, WorkQueue

log = logging.getLogger("flatrender.agent")

# A heartbeat stuck longer than this is worth less than a fresh one (the orchestrator's
# timeout is 15 s): give up on it and send the next.
HEARTBEAT_TIMEOUT_SEC = 8.0


@attrs.frozen
class NodeIdentity:
    name: str
    node_id: UUID
    secret: str = attrs.field(repr=False)


@attrs.define
class _Active:
    """The work the node is doing now; cancelling ``scope`` abandons it without a report."""

    work: c.Work
    scope: trio.CancelScope
    progress: RangeProgress | None


class SimNode:
    def __init__(
        self, identity: NodeIdentity, http: httpx.AsyncClient, options: AgentOptions
    ) -> None:
        self.name = identity.name
        self.node_id = identity.node_id
        self.options = options
        self.version = options.agent_version
        self.boots = 0
        self.client = SignedClient(
            http,
            options.api,
            identity.node_id,
            identity.secret,
            identity.name,
            max_backoff=options.max_backoff,
        )
        self._http = http
        self._inbox = c.Inbox()
        self._queue = WorkQueue()
        self._cache = TemplateCache()
        self._ae = AeProcess(options.ae_version)
        self._faults = FaultPlanner(options.faults, options.seed, identity.name)
        self._noise = random.Random(f"{options.seed}:{identity.name}:noise")
        self._active: _Active | None = None
        self._wake = trio.Event()
        self._session: trio.Nursery | None = None
        self._reboot_reason: str | None = None
        self._updating = False
        self._settings = RenderSettings(options.frame_time, options.ae_restart_delay, Path())

    def __repr__(self) -> str:
        return f"SimNode(name={self.name!r}, node_id={self.node_id})"

    async def run(self) -> None:
        """Live until cancelled or ``die_after`` elapses; errors are logged, never raised."""
        die_after = self.options.die_after
        with (
            trio.CancelScope(
                deadline=math.inf if die_after is None else trio.current_time() + die_after
            ) as life,
            tempfile.TemporaryDirectory(prefix=f"flatrender-{self.name}-") as tmp,
        ):
            work_dir = self.options.work_dir / self.name if self.options.work_dir else Path(tmp)
            work_dir.mkdir(parents=True, exist_ok=True)
            self._settings = attrs.evolve(self._settings, work_dir=work_dir)
            while True:
                try:
                    await self._session_run()
                except Exception:
                    # Like a crashed agent service that its supervisor starts again.
                    log.exception("node=%s agent error; starting it again", self.name)
                    await trio.sleep(1.0)
                if self._reboot_reason is not None:
                    log.info("node=%s rebooting (%s)", self.name, self._reboot_reason)
                    self._ae.running = False
                    await trio.sleep(self.options.restart_delay)
                    self._reboot_reason = None
        if life.cancelled_caught:
            log.warning(
                "node=%s power cut (--die-after %ss): silent from now on", self.name, die_after
            )

    # -- session --------------------------------------------------------------------------

    async def _session_run(self) -> None:
        await self._go_online()
        try:
            async with trio.open_nursery() as session:
                self._session = session
                session.start_soon(self._heartbeat_loop)
                session.start_soon(self._work_loop)
        finally:
            self._session = None

    def _reboot(self, reason: str) -> None:
        """Drop all work and end the session; :meth:`run` waits and boots again."""
        self._drop_all()
        self._reboot_reason = reason
        if self._session is not None:
            self._session.cancel_scope.cancel()

    async def _go_online(self) -> None:
        body = {
            "node_agent_version": self.version,
            "current_ae_version": self._ae.version,
            "available_ae_versions": [self._ae.version],
            "ram_gb": self.options.ram_gb,
            "cpu_cores": self.options.cpu_cores,
            "cache_used_gb": self._cache.used_gb,
            "cached_template_md5s": self._cache.md5s,
        }
        backoff = Backoff(cap=self.options.max_backoff)
        while True:
            reply = await self.client.call(f"/v1/internal/nodes/{self.node_id}/online", body)
            if reply.ok:
                break
            delay = max(5.0, backoff.next())
            log.error(
                "node=%s online refused: HTTP %d %s; trying again in %.0fs",
                self.name,
                reply.status,
                reply.body,
                delay,
            )
            await trio.sleep(delay)
        self.boots += 1
        log.info("node=%s id=%s online version=%s", self.name, self.node_id, self.version)

    # -- heartbeats and commands ---------------------------------------------------------

    async def _heartbeat_loop(self) -> None:
        backoff = Backoff(initial=0.5, cap=self.options.max_backoff)
        path = f"/v1/internal/nodes/{self.node_id}/heartbeat"
        while True:
            acks = self._inbox.pending_acks()
            reply: Reply | None = None
            try:
                with trio.move_on_after(HEARTBEAT_TIMEOUT_SEC):
                    body = {**self.health(), "acked_command_ids": acks}
                    reply = await self.client.post(path, body)
                if reply is None:
                    raise Unavailable(f"no answer within {HEARTBEAT_TIMEOUT_SEC}s")
                if reply.ok:
                    self._inbox.acknowledged(acks)
                    for command in self._receive(reply.body):
                        self._dispatch(command)
                    backoff.reset()
                    await trio.sleep(self._interval(reply.body))
                    continue
                level, delay = logging.WARNING, backoff.next()
                problem = f"HTTP {reply.status} {reply.error_code}".rstrip()
                if reply.status == 401:
                    level, delay = logging.ERROR, max(delay, 5.0)
                    problem += ": bad node secret or unknown node (stale --state-file?)"
                elif reply.status < 500:
                    level = logging.ERROR
            except Unavailable as e:
                level, delay, problem = logging.WARNING, backoff.next(), str(e)
            except Exception as e:  # one bad heartbeat answer must not stop the next
                log.exception("node=%s heartbeat answer not understood", self.name)
                level, delay, problem = logging.ERROR, backoff.next(), repr(e)
            log.log(level, "node=%s heartbeat failed: %s; next in %.1fs", self.name, problem, delay)
            await trio.sleep(delay)

    def _interval(self, body: Any) -> float:
        asked = body.get("next_heartbeat_in_sec") if isinstance(body, dict) else None
        if not isinstance(asked, int | float) or isinstance(asked, bool):
            return self.options.default_heartbeat_sec
        return max(self.options.min_heartbeat_sec, float(asked))

    def _receive(self, body: Any) -> list[c.Command]:
        raw = body.get("pending_commands") if isinstance(body, dict) else None
        received = self._inbox.receive(raw if isinstance(raw, list) else [])
        for command_id, reason in received.rejected:
            log.error(
                "node=%s command=%s rejected (acknowledged anyway): %s",
                self.name,
                command_id,
                reason,
            )
        return received.commands

    def health(self) -> dict[str, Any]:
        """The heartbeat's NodeHealth fields, as this node sees itself."""
        active = self._active
        busy = active is not None or len(self._queue) > 0
        frame = None
        if active is not None and active.progress is not None:
            frame = min(active.progress.next_frame, active.progress.end)
        ram_mb = self.options.ram_gb * 1024
        load = self._noise.uniform(0.45, 0.7) if busy else self._noise.uniform(0.1, 0.2)
        return {
            "node_id": str(self.node_id),
            "recorded_at": utc_now(),
            "status": "Busy" if busy else "Idle",
            "cpu_pct": self._noise.randint(70, 99) if busy else self._noise.randint(1, 8),
            "ram_available_mb": int(ram_mb * (1 - load)),
            "ae_running": self._ae.running,
            "current_job_id": str(active.work.job_id) if active is not None else None,
            "current_frame": frame,
            "cache_used_gb": self._cache.used_gb,
        }

    def _dispatch(self, command: c.Command) -> None:
        """Act on a new command at once (never blocks): commands of one heartbeat answer apply
        in order, so work delivered after a ``Restart`` in the same answer survives it."""
        log.info("node=%s command=%s %s", self.name, command.id, c.describe(command))
        match command:
            case c.RenderFrames() | c.PrepareReplica():
                self._queue.push(command)
                self._wake.set()
            case c.TrimRange(frame_job_id=range_id, end_frame=end):
                active = self._active_range(range_id)
                if active is not None and active.progress is not None:
                    result = active.progress.trim(end).value
                else:
                    queued = self._queue.trim(range_id, end)
                    result = queued.value if queued is not None else "not here"
                log.info("node=%s range=%s trim to %d: %s", self.name, range_id, end, result)
            case c.CancelRender(frame_job_id=range_id):
                active = self._active_range(range_id)
                if active is not None:
                    active.scope.cancel()
                found = active is not None or self._queue.cancel(range_id)
                log.info("node=%s range=%s cancel: %s", self.name, range_id, found or "not here")
            case c.CloseAE():
                if self._active is not None:
                    self._active.scope.cancel()
                self._ae.running = False
            case c.Release():
                self._drop_all()
            case c.Restart():
                self._reboot(f"command {command.id}")
            case c.UpdateSoftware():
                if self._updating or self._session is None:
                    log.warning(
                        "node=%s update %s ignored: one is running", self.name, command.update_id
                    )
                else:
                    self._session.start_soon(self._update, command)

    def _active_range(self, frame_job_id: UUID) -> _Active | None:
        active = self._active
        if (
            active is not None
            and isinstance(active.work, c.RenderFrames)
            and active.work.frame_job_id == frame_job_id
        ):
            return active
        return None

    def _drop_all(self) -> None:
        for work in self._queue.clear():
            log.info("node=%s dropped waiting %s", self.name, c.describe(work))
        if self._active is not None:
            self._active.scope.cancel()

    # -- work ------------------------------------------------------------------------------

    async def _work_loop(self) -> None:
        while True:
            work = self._queue.pop()
            if work is None:
                self._wake = trio.Event()
                await self._wake.wait()
                continue
            outcome = await self._execute(work)
            if outcome is Outcome.REBOOT:
                self._reboot("crash answer RestartNode")

    async def _execute(self, work: c.Work) -> Outcome:
        """Run one piece of work; abandoned silently when its scope is cancelled."""
        outcome = Outcome.DROPPED
        with trio.CancelScope() as scope:
            progress = RangeProgress.of(work) if isinstance(work, c.RenderFrames) else None
            self._active = _Active(work, scope, progress)
            try:
                if isinstance(work, c.RenderFrames):
                    assert progress is not None
                    plan = self._faults.plan_range(work.start_frame, work.end_frame)
                    outcome = await render_range(
                        self.client, self._http, work, progress, plan, self._ae, self._settings
                    )
                else:
                    done = await prepare_replica(
                        self.client,
                        self._http,
                        self._cache,
                        work,
                        download_time=self.options.download_time,
                    )
                    outcome = Outcome.DONE if done else Outcome.DROPPED
            except Exception:
                log.exception("node=%s %s failed; dropping it", self.name, c.describe(work))
            finally:
                self._active = None
        if scope.cancelled_caught:
            log.info("node=%s %s abandoned", self.name, c.describe(work))
        return outcome

    async def _update(self, command: c.UpdateSoftware) -> None:
        self._updating = True
        try:
            data = await get_bytes(self._http, command.download_url)
            if not data:
                raise TransferFailed("the download is empty")
            log.info(
                "node=%s update=%s installing %s (%d bytes)",
                self.name,
                command.update_id,
                command.update_file_name,
                len(data),
            )
            await trio.sleep(self.options.install_time)
            self.version = command.agent_version
            self._reboot(f"update {command.update_id} to {self.version}")
        except TransferFailed as e:
            log.error("node=%s update=%s download failed: %s", self.name, command.update_id, e)
        finally:
            self._updating = False
