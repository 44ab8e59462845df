"""Crash-report latency, measured by a lean client that plays a few real nodes (node protocol v1).

Each probe node is registered with ``POST /v1/nodes`` (the service token; the answer holds its
secret), goes online and heartbeats every ``poll`` seconds on its own keep-alive connection,
signing every request like an agent. Probe projects use an AfterFX version only probe nodes
have, so their work goes to probe nodes alone, while the rest of the farm renders as usual.

When a heartbeat answer brings a ``RenderFrames``, the node reports AfterFX crashes for that
range, each 0.2-1.5 s after the range arrived or AfterFX restarted (so that crashes of
different probe nodes do not coincide), as a node whose AfterFX keeps dying would: a first
crash (the policy answers ``ResetAndRestart``), the very same report again (a retry after a lost
answer: the stored answer comes back), a second crash of the range (``ReassignWork``: it drops
the range), and on its next range a third crash (``RestartNode``, and the node is
quarantined). Every crash POST is timed from the request written to the answer read
(:class:`lg.Http1Connection`); the client is plain asyncio with a handful of tasks, so the
figure is the daemon's answer time plus loopback. ``PrepareReplica`` is played too (a small
upload with the presigned url, then ``replica-ready``), so the probe projects get their
replica like any other. A ``409 stale_assignment`` answer is correct fencing: a probe job whose
range used up its attempts on probe nodes fails, and its other ranges are cancelled.
"""

from __future__ import annotations

import asyncio
import json
import random
import time
from dataclasses import dataclass, field
from typing import Any
from uuid import UUID

import httpx

from bench import _farm as farm
from bench import _loadgen as lg
from flatrender.domain import signing

PROBE_AE = "probe-2099"


@dataclass
class CrashSample:
    latency: float  # seconds, request written -> answer read
    status: int
    action: str  # action_recommended, or the error code
    kind: str  # "first", "repeat" (same report again), "second", "node-restart", ...
    at: float  # unix time of the answer


@dataclass
class ProbeResults:
    samples: list[CrashSample] = field(default_factory=list)
    heartbeats: int = 0
    replicas_built: int = 0
    errors: list[str] = field(default_factory=list)


class ProbeNode:
    def __init__(
        self, name: str, node_id: UUID, secret: str, port: int, results: ProbeResults
    ) -> None:
        self.name = name
        self.node_id = node_id
        self.signer = signing.Signer(secret)
        self.host = f"127.0.0.1:{port}"
        self.port = port
        self.results = results
        self.conn: lg.Http1Connection | None = None
        self.seen: set[str] = set()
        self.to_ack: list[str] = []
        self.holding: dict[str, Any] | None = None  # the RenderFrames command held
        self.crash_due = 0.0  # when AfterFX "crashes" next on the range held
        self.crashes_on_range = 0
        self.crashes = 0
        self.rng = random.Random(name)

    def _request(self, path: str, body: dict[str, Any]) -> bytes:
        raw = json.dumps(body).encode()
        header = self.signer.header("POST", path, raw)  # never a signature sent before
        return (
            f"POST {path} HTTP/1.1\r\nHost: {self.host}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(raw)}\r\n"
            f"{signing.HEADER}: {header}\r\n\r\n"
        ).encode() + raw

    async def _post(self, path: str, body: dict[str, Any]) -> tuple[int, Any, float]:
        if self.conn is None or self.conn.closed:
            self.conn = await lg.connect("127.0.0.1", self.port)
        data = self._request(path, body)
        sent = time.perf_counter()
        status, raw = await self.conn.request(data)
        latency = time.perf_counter() - sent
        try:
            answer = json.loads(raw) if raw else None
        except ValueError:
            answer = None
        return status, answer, latency

    async def run(self, http: httpx.AsyncClient, crashes_wanted: int, poll: float) -> None:
        base = f"/v1/internal/nodes/{self.node_id}"
        online = {
            "node_agent_version": "crash-probe",
            "current_ae_version": PROBE_AE,
            "available_ae_versions": [PROBE_AE],
            "ram_gb": 32,
            "cpu_cores": 16,
        }
        status, answer, _ = await self._post(f"{base}/online", online)
        if status != 200:
            self.results.errors.append(f"{self.name} online: HTTP {status} {answer}")
            return
        while self.crashes < crashes_wanted:
            acks = list(self.to_ack)
            body = {
                "node_id": str(self.node_id),
                "status": "Busy" if self.holding else "Idle",
                "cpu_pct": 50 if self.holding else 3,
                "ram_available_mb": 30_000,
                "ae_running": self.holding is not None,
                "current_job_id": self.holding["job_id"] if self.holding else None,
                "current_frame": self.holding["start_frame"] if self.holding else None,
                "cache_used_gb": 1,
                "acked_command_ids": acks,
            }
            status, answer, _ = await self._post(f"{base}/heartbeat", body)
            if status == 200 and isinstance(answer, dict):
                self.results.heartbeats += 1
                self.to_ack = [a for a in self.to_ack if a not in acks]
                for command in answer.get("pending_commands") or []:
                    await self._command(http, command)
                if self.holding is not None and time.monotonic() >= self.crash_due:
                    await self._crash()
            else:
                self.results.errors.append(f"{self.name} heartbeat: HTTP {status} {answer}")
            await asyncio.sleep(poll)

    async def _command(self, http: httpx.AsyncClient, command: dict[str, Any]) -> None:
        cid = str(command["id"])
        if cid not in self.to_ack:
            self.to_ack.append(cid)
        if cid in self.seen:
            return
        self.seen.add(cid)
        kind = command.get("type")
        if kind == "RenderFrames" and self.holding is None:
            self.holding = command
            self.crashes_on_range = 0
            self._schedule_crash()
        elif kind == "PrepareReplica":
            await self._build_replica(http, command)
        elif (
            kind in ("CancelRender", "Release", "Restart")
            and self.holding is not None
            and (
                kind != "CancelRender"
                or command.get("frame_job_id") == self.holding["frame_job_id"]
            )
        ):
            self.holding = None

    async def _build_replica(self, http: httpx.AsyncClient, command: dict[str, Any]) -> None:
        put = await http.put(command["replica_upload_url"], content=b"probe replica " * 64)
        if put.status_code >= 300:
            self.results.errors.append(f"{self.name} replica upload: HTTP {put.status_code}")
            return
        path = f"/v1/internal/render/jobs/{command['job_id']}/replica-ready"
        body = {"node_id": str(self.node_id), "replica_path": command["replica_key"]}
        status, answer, _ = await self._post(path, body)
        if status >= 300:
            self.results.errors.append(f"{self.name} replica-ready: HTTP {status} {answer}")
        else:
            self.results.replicas_built += 1

    async def _crash(self) -> None:
        held = self.holding
        assert held is not None
        path = f"/v1/internal/render/jobs/{held['job_id']}/crash"
        body = {
            "node_id": str(self.node_id),
            "frame_job_id": held["frame_job_id"],
            "last_known_frame": held["start_frame"] + self.crashes_on_range,
            "crash_signal": "SIGSEGV",
            "ae_version": PROBE_AE,
            "error_log_tail": "aerender: Segmentation fault (bench crash probe)\n" * 4,
            "log_file_url": "",
        }
        kinds = {0: "first crash of the range", 1: "second crash of the range"}
        kind = kinds.get(self.crashes_on_range, "later crash")
        if self.crashes >= 2:
            kind = "third crash of the node"
        action = await self._timed_crash(path, body, kind)
        self.crashes += 1
        self.crashes_on_range += 1
        if action == "ResetAndRestart":
            await self._timed_crash(path, body, "same report again (idempotent)")
            self._schedule_crash()
            return
        self.holding = None  # ReassignWork, RestartNode, or refused: the range is gone

    def _schedule_crash(self) -> None:
        """AfterFX renders a few frames first: crashes of different nodes do not coincide."""
        self.crash_due = time.monotonic() + self.rng.uniform(0.2, 1.5)

    async def _timed_crash(self, path: str, body: dict[str, Any], kind: str) -> str:
        status, answer, latency = await self._post(path, body)
        if status == 200 and isinstance(answer, dict):
            action = str(answer.get("action_recommended"))
        else:
            action = f"HTTP {status}"
            if isinstance(answer, dict) and isinstance(answer.get("error"), dict):
                action += f" {answer['error'].get('code')}"
        self.results.samples.append(CrashSample(latency, status, action, kind, time.time()))
        return action


class CrashProbe:
    """``nodes`` probe nodes, each reporting ``crashes_per_node`` crashes on its work."""

    def __init__(
        self, api: farm.Api, port: int, nodes: int, crashes_per_node: int = 3, prefix: str = "probe"
    ) -> None:
        self.api = api
        self.prefix = prefix
        self.port = port
        self.count = nodes
        self.crashes_per_node = crashes_per_node
        self.results = ProbeResults()
        self.nodes: list[ProbeNode] = []
        self.jobs: list[UUID] = []
        self.project: UUID | None = None

    async def prepare(self, project: UUID) -> None:
        """Register the probe nodes and the probe project (not yet any work)."""
        self.project = project
        await self.api.put_project(project, 30, ae_version=PROBE_AE)
        for i in range(self.count):
            name = f"{self.prefix}-{i + 1}"
            node_id, secret = await self.api.register_node(name, PROBE_AE)
            self.nodes.append(ProbeNode(name, node_id, secret, self.port, self.results))

    async def run(self, within_sec: float, poll: float = 0.25) -> None:
        """Run every probe node and feed them work until each has crashed enough, or timeout."""
        assert self.project is not None
        async with httpx.AsyncClient(timeout=30.0) as http:
            tasks = [
                asyncio.ensure_future(n.run(http, self.crashes_per_node, poll)) for n in self.nodes
            ]
            feeder = asyncio.ensure_future(self._feed())
            try:
                done, pending = await asyncio.wait(tasks, timeout=within_sec)
                for task in pending:
                    task.cancel()
                for task in done:
                    if task.exception() is not None:
                        self.results.errors.append(f"probe node failed: {task.exception()!r}")
            finally:
                feeder.cancel()
                for n in self.nodes:
                    if n.conn is not None:
                        n.conn.close()
        for job in self.jobs:  # what is left of the probe's work must not wait for anyone
            await self.api.cancel(job)

    async def _feed(self) -> None:
        """Keep about one probe job per probe node still wanting a crash."""
        assert self.project is not None
        self.jobs.append(await self.api.submit(self.project))  # builds the replica
        while True:
            await asyncio.sleep(1.0)
            wanting = sum(
                1 for n in self.nodes if n.crashes < self.crashes_per_node and n.holding is None
            )
            if wanting and len(self.jobs) < 4 * self.count:
                self.jobs += await self.api.submit_many([self.project] * wanting, concurrency=4)
                await asyncio.sleep(2.0)
