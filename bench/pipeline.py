"""Job pipeline benchmark (issue 4): short jobs over simulated nodes, node death, crashes, restart.

Run::

    .venv/bin/python -m bench.pipeline              # 200 jobs over 50 nodes (about 6 minutes)
    .venv/bin/python -m bench.pipeline --quick      # 40 jobs over 20 nodes (about 5 minutes)
    .venv/bin/python -m bench.pipeline --help       # sizes, frame times, phases to skip, py-spy

Everything is real: embedded PostgreSQL and S3, ``flatrender serve`` as a subprocess (one per
phase, each with its own configuration file), ``flatrender agent`` subprocesses rendering tiny
real mp4 segments, uploads, validation and merges. The benchmark plays the main app (catalog PUT
and billing credit with the service token, submits with a user JWT) and takes its figures from
PostgreSQL (``frame_jobs.created_at``: a range is ready; ``assigned_at``: dispatched), from the
agents' logs (the moment a heartbeat answer brought the ``RenderFrames`` to the node, to the
millisecond) and from its own clients. Phases, in one run:

1. *short*: ``--jobs`` jobs of 30-60 frames at 30 fps, frame time ``--frame-time`` (ranges of
   10-30 frames last well under one heartbeat interval), ``heartbeat_interval_sec`` 5,
   ``busy_heartbeat_interval_sec`` 1, ``min_chunk_frames`` 10. After a warm-up that builds each
   project's replica: the *saturating* load (all jobs at once), then a *light* load (jobs one by
   one, 1-2 s apart, nodes idle). During the saturating load the crash probe
   (``bench/_crashprobe.py``) plays ``--probe-nodes`` nodes whose AfterFX keeps crashing, on
   work of their own, and times every crash report's answer; the agents crash too
   (``--crash-rate``) and their logs give the latency their nodes saw.
2. *long-busy1* / *long-busy5*: ``--compare-jobs`` jobs with ``--compare-frame-time`` (ranges
   outlast one heartbeat interval, as real AfterFX ranges do), once with
   ``busy_heartbeat_interval_sec`` 1 and once with 5 (no shortening): what
   ``next_heartbeat_in_sec`` buys.
3. node death: heartbeat interval 1 s, timeout ``--death-timeout`` 3 s. ``--doomed-nodes`` nodes
   of their own agent (slow frames) get ranges; the agent is SIGKILLed while they render;
   measured from the kill (and from their last heartbeat) to the replacement range's
   assignment to another node, and to its delivery.
4. dispatch burst and restart: ``--restart-nodes`` nodes registered in bulk,
   ``--restart-jobs`` jobs of 50 frames (5 ranges of 10) submitted while no node is up. Then
   every node heartbeats once and falls silent (the scheduler alone: ranges dispatched per
   second); the silent nodes time out together (mass node loss: until every range is
   requeued); they come back and heartbeat as told (the dispatch rate under the heartbeat load
   the daemon asks for). With every range assigned (nodes Busy, jobs Rendering) the daemon is
   SIGKILLed and started again, ``--restarts`` times: exec -> READY=1 and -> first ``/healthz``.

Prints the figures and a PASS/FAIL line per target of issue 4, exits 0 unless the harness itself
failed. ``--py-spy PATH`` records the daemon during the bursts and the mass node loss (collapsed
stacks in the ``--keep`` folder). Figures on a shared 2-core machine are noisy: compare figures
of one run.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from uuid import UUID, uuid4

from bench import _crashprobe as cp
from bench import _farm as farm
from bench import _harness as h
from bench import _loadgen as lg
from bench.heartbeats import SimFleet, table

HOST = "127.0.0.1"
PIPE = "pipe"  # the simulated fleet's node names: pipe-1 .. pipe-N
DOOMED = "doomed"

# Targets of issue 4.
TARGET_DISPATCH_PER_SEC = 500.0  # "Tractor claims > 500 tasks/s"
TARGET_REASSIGN_SLACK_SEC = 1.0  # node death -> reassignment <= timeout + 1 s
TARGET_CRASH_P99_SEC = 0.050
TARGET_RESTART_SEC = 5.0
TARGET_RESTART_NODES = 1000
TARGET_RESTART_JOBS = 200

PIPELINE_FRAMES = (30, 36, 42, 48, 54, 60)  # short jobs at 30 fps: 1-2 s of video
RESTART_FRAMES = 50  # 5 ranges of 10 frames


def progress(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def pct(values: list[float], q: float) -> float:
    return lg.percentile(values, q)


def sec(value: float) -> str:
    return "-" if value != value else f"{value:.2f}"


def ms(value: float) -> str:
    return "-" if value != value else f"{value * 1000:.1f}"


def verdict(ok: bool | None, scoped: bool = True) -> str:
    word = "n/a" if ok is None else ("PASS" if ok else "FAIL")
    return word if scoped or ok is None else f"({word})"


# ------------------------------------------------------------------ the farm


@dataclass
class Farm:
    args: argparse.Namespace
    env: h.Environment
    secrets: farm.Secrets
    api: farm.Api
    db: farm.Db
    pipeline_projects: list[UUID]
    restart_projects: list[UUID]
    rng: random.Random = field(default_factory=lambda: random.Random(4))
    catalog_ready: bool = False
    replicas_ready: bool = False

    async def all_offline(self) -> None:
        """Before a daemon starts: the agents of the last phase are gone, so are their nodes.

        Without this the daemon rebuilds them as they were (Idle) and hands them work before
        the new agents' Online, which drops it again (requeued, an attempt spent)."""
        await self.db.conn.execute("UPDATE nodes SET status = 'Offline' WHERE status <> 'Offline'")

    def config(self, name: str, nodes: dict[str, Any], jobs: dict[str, Any]) -> Path:
        return farm.write_config(self.env, name, {"nodes": nodes, "jobs": jobs})

    def daemon(self, config: Path, name: str) -> h.DaemonProcess:
        return h.DaemonProcess(config, self.env.root / f"daemon-{name}.log", self.env.port)

    def agent(self, prefix: str, nodes: int, name: str, **kw: Any) -> farm.Agent:
        return farm.Agent(
            self.env.root,
            self.env.port,
            self.secrets.service_token,
            prefix,
            nodes,
            log_name=f"{prefix}-{name}",
            **kw,
        )

    def pick_projects(self, count: int) -> list[UUID]:
        return [self.rng.choice(self.pipeline_projects) for _ in range(count)]


# ------------------------------------------------------------------ pipeline phase


@dataclass
class LoadFigures:
    """One set of jobs: how their ranges went from ready to a node."""

    jobs: int
    steps: dict[str, int]
    ranges: int
    frames: int
    assigned: int
    delivered: int
    requeued: int
    ready_to_assigned: list[float]
    assigned_to_delivered: list[float]
    ready_to_delivered: list[float]
    dispatch_rate: float  # ranges assigned / (last - first assignment)
    dispatch_peak_1s: int
    makespan: float  # first submit -> last job terminal
    node_gaps: list[float] = field(default_factory=list)  # range done -> next delivered
    acked_after_delivery: list[float] = field(default_factory=list)


@dataclass
class PipelineResult:
    name: str
    busy_interval: int
    frame_time: float
    startup_sec: float
    light: LoadFigures | None = None
    saturated: LoadFigures | None = None
    agent_crashes: list[tuple[float, str]] = field(default_factory=list)
    probe: cp.ProbeResults | None = None
    probe_rest: cp.ProbeResults | None = None
    cpu: tuple[float, float] = (float("nan"), float("nan"))  # saturating load: daemon, PostgreSQL
    machine: tuple[float, float] = (float("nan"), float("nan"))  # all cores busy %, agent %
    daemon_exit: int | None = None


async def figures(
    f: Farm,
    jobs: list[UUID],
    submitted_at: float,
    events: farm.AgentEvents,
    gaps_window: bool = False,
) -> LoadFigures:
    ranges = await f.db.ranges(jobs)
    commands = await f.db.render_commands(jobs)
    steps = await f.db.steps(jobs)
    last_done = await f.db.conn.fetchval(
        "SELECT max(completed_at) FROM render_jobs WHERE id = ANY($1::uuid[])", jobs
    )
    r2a, a2d, r2d, acked = [], [], [], []
    assigned_times: list[float] = []
    delivered = 0
    for r in ranges:
        if r.assigned is None:
            continue
        assigned_times.append(r.assigned)
        r2a.append(r.assigned - r.created)
        got = events.received.get(r.id)
        cmd = commands.get(r.id)
        if got is None:
            continue
        delivered += 1
        r2d.append(got[0] - r.created)
        a2d.append(got[0] - (cmd.created if cmd is not None else r.assigned))
        if cmd is not None and cmd.acked is not None:
            acked.append(cmd.acked - got[0])
    assigned_times.sort()
    span = assigned_times[-1] - assigned_times[0] if len(assigned_times) > 1 else 0.0
    peak, j = 0, 0
    for i, t in enumerate(assigned_times):
        while assigned_times[j] < t - 1.0:
            j += 1
        peak = max(peak, i - j + 1)
    gaps: list[float] = []
    if gaps_window and assigned_times:
        # While work waited (until the last range was handed out): how long a node that
        # finished a range stayed without the next one.
        ids = {r.id for r in ranges}
        window_end = assigned_times[-1]
        for timeline in events.by_node.values():
            for (t1, kind1, r1), (t2, kind2, r2) in zip(timeline, timeline[1:], strict=False):
                if (
                    kind1 == "done"
                    and kind2 == "received"
                    and r1 in ids
                    and r2 in ids
                    and submitted_at <= t1 <= window_end
                ):
                    gaps.append(t2 - t1)
    return LoadFigures(
        jobs=len(jobs),
        steps=steps,
        ranges=len(ranges),
        frames=sum(r.frames for r in ranges if r.replaces_id is None),
        assigned=len(assigned_times),
        delivered=delivered,
        requeued=sum(1 for r in ranges if r.replaces_id is not None),
        ready_to_assigned=r2a,
        assigned_to_delivered=a2d,
        ready_to_delivered=r2d,
        dispatch_rate=(len(assigned_times) - 1) / span if span > 0 else float("nan"),
        dispatch_peak_1s=peak,
        makespan=(last_done.timestamp() - submitted_at) if last_done else float("nan"),
        node_gaps=gaps,
        acked_after_delivery=acked,
    )


async def warm_up(f: Farm, agent: farm.Agent) -> None:
    """One job per project, so every project has its replica before anything is measured."""
    projects = f.pipeline_projects + f.restart_projects
    progress(f"warm-up: one job per project ({len(projects)}) to build the replicas")
    jobs = await f.api.submit_many(projects)
    if not await f.db.wait_terminal(jobs, 180):
        raise h.HarnessError(f"warm-up jobs did not finish: {await f.db.steps(jobs)}")
    steps = await f.db.steps(jobs)
    if steps.get("Completed", 0) != len(jobs):
        raise h.HarnessError(f"warm-up jobs did not all complete: {steps}\n{agent.tail()}")


async def pipeline_phase(
    f: Farm,
    name: str,
    busy: int,
    jobs_count: int,
    *,
    frame_time: float,
    crash_rate: float,
    probe: bool = False,
    light: bool = False,
) -> PipelineResult:
    """One daemon and one agent: warm-up (first phase only), the saturating load, then the
    light load; the crash probe runs during the saturating load."""
    args = f.args
    config = f.config(
        f"pipeline-{name}",
        {"heartbeat_interval_sec": 5, "busy_heartbeat_interval_sec": busy,
         "heartbeat_timeout_sec": 15},
        {"min_chunk_frames": 10, "max_chunk_frames": 30},
    )  # fmt: skip
    daemon = f.daemon(config, f"pipeline-{name}")
    progress(f"pipeline ({name}): starting the daemon and {args.nodes} simulated nodes")
    await f.all_offline()
    startup = daemon.start()
    result = PipelineResult(name, busy, frame_time, startup)
    agent = f.agent(PIPE, args.nodes, name, frame_time=frame_time, crash_rate=crash_rate, seed=7)
    crash_probe: cp.CrashProbe | None = None
    light_jobs: list[UUID] = []
    light_at = 0.0
    try:
        if not f.catalog_ready:
            await setup_catalog(f)
        agent.start()
        await farm.wait_nodes(f.db, PIPE, args.nodes, "Idle", 180, [agent])
        if not f.replicas_ready:
            await warm_up(f, agent)
            f.replicas_ready = True
        if probe and args.probe_nodes > 0:
            crash_probe = cp.CrashProbe(f.api, f.env.port, args.probe_nodes)
            await crash_probe.prepare(uuid4())
        progress(
            f"pipeline ({name}): {jobs_count} jobs at once over {args.nodes} nodes, frame time "
            f"{frame_time}s"
            + (f", crash probe with {args.probe_nodes} nodes" if crash_probe else "")
        )
        saturated_at = time.time()
        meter = h.CpuMeter(daemon, f.env.pg).start()
        machine = MachineCpu(agent).start()
        spy = start_py_spy(f, daemon, f"saturating-{name}")
        probe_task = asyncio.ensure_future(crash_probe.run(args.timeout)) if crash_probe else None
        saturated = await f.api.submit_many(f.pick_projects(jobs_count))
        if not await f.db.wait_terminal(saturated, args.timeout):
            progress(f"pipeline ({name}): not all jobs ended in {args.timeout}s")
        if probe_task is not None:
            await probe_task
        meter.stop()
        machine.stop()
        stop_py_spy(spy)
        result.cpu = (meter.pct(meter.daemon_sec), meter.pct(meter.postgres_sec))
        result.machine = (machine.busy_pct, machine.agent_pct)
        if light:
            progress(f"pipeline ({name}): light load, {args.light_jobs} jobs one at a time")
            await asyncio.sleep(f.rng.uniform(1.0, 5.0))
            light_at = time.time()
            for project in f.pick_projects(args.light_jobs):
                light_jobs.append(await f.api.submit(project))
                await asyncio.sleep(f.rng.uniform(1.0, 2.0))
            await f.db.wait_terminal(light_jobs, 120)
        if probe and args.probe_nodes > 0:
            progress(f"pipeline ({name}): crash probe at rest, {args.probe_nodes} fresh nodes")
            rest_probe = cp.CrashProbe(f.api, f.env.port, args.probe_nodes, prefix="probe-rest")
            await rest_probe.prepare(uuid4())
            await rest_probe.run(120)
            result.probe_rest = rest_probe.results
    finally:
        agent.kill()
        result.daemon_exit = daemon.stop()
    events = farm.agent_events([agent.log_path])
    result.saturated = await figures(f, saturated, saturated_at, events, gaps_window=True)
    if light_jobs:
        result.light = await figures(f, light_jobs, light_at, events)
    result.agent_crashes = events.crash_latencies
    result.probe = crash_probe.results if crash_probe else None
    return result


async def setup_catalog(f: Farm) -> None:
    for project, frames in zip(
        f.pipeline_projects, PIPELINE_FRAMES * len(f.pipeline_projects), strict=False
    ):
        await f.api.put_project(project, frames)
    for project in f.restart_projects:
        await f.api.put_project(project, RESTART_FRAMES)
    await f.api.credit(10**12)
    f.catalog_ready = True


class MachineCpu:
    """Busy share of all cores (``/proc/stat``) and the agent's CPU, over a window."""

    def __init__(self, agent: farm.Agent) -> None:
        self.agent = agent
        self.busy_pct = self.agent_pct = float("nan")
        self._t0 = 0.0
        self._stat0: tuple[int, int] = (0, 0)
        self._agent0 = 0

    @staticmethod
    def _stat() -> tuple[int, int]:
        fields = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
        idle = fields[3] + fields[4]  # idle + iowait
        return sum(fields) - idle, sum(fields)

    def _agent_ticks(self) -> int:
        proc = self.agent.proc
        return h.proc_cpu_ticks(proc.pid) if proc is not None else 0

    def start(self) -> MachineCpu:
        self._t0 = time.monotonic()
        self._stat0 = self._stat()
        self._agent0 = self._agent_ticks()
        return self

    def stop(self) -> MachineCpu:
        busy, total = self._stat()
        wall = time.monotonic() - self._t0
        if total > self._stat0[1]:
            self.busy_pct = 100.0 * (busy - self._stat0[0]) / (total - self._stat0[1])
        if wall > 0:
            self.agent_pct = 100.0 * (self._agent_ticks() - self._agent0) / h.CLK_TCK / wall
        return self


# ------------------------------------------------------------------ node death


@dataclass
class LostRange:
    range_id: UUID
    node: str
    status: str
    last_heartbeat: float | None
    offline: float | None
    requeued: float | None
    reassigned: float | None
    delivered: float | None
    killed: float


@dataclass
class DeathResult:
    timeout: int
    interval: int
    lost: list[LostRange] = field(default_factory=list)
    jobs: dict[str, int] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


HELD_BY = """
SELECT f.id, n.name, f.status FROM frame_jobs f JOIN nodes n ON n.id = f.node_id
WHERE n.name LIKE $1 AND f.status IN ('Assigned', 'Rendering', 'Rendered')
"""


async def death_phase(f: Farm) -> DeathResult:
    args = f.args
    timeout, interval = args.death_timeout, max(1, args.death_timeout // 3)
    config = f.config(
        "death",
        {"heartbeat_interval_sec": interval, "busy_heartbeat_interval_sec": 1,
         "heartbeat_timeout_sec": timeout},
        {"min_chunk_frames": 10, "max_chunk_frames": 30},
    )  # fmt: skip
    daemon = f.daemon(config, "death")
    result = DeathResult(timeout, interval)
    progress(f"node death: heartbeat every {interval}s, timeout {timeout}s")
    await f.all_offline()
    daemon.start()
    fleet = f.agent(PIPE, args.nodes, "death", frame_time=args.frame_time)
    doomed_agents: list[farm.Agent] = []
    jobs: list[UUID] = []
    try:
        if not f.catalog_ready:
            await setup_catalog(f)
        fleet.start()
        await farm.wait_nodes(f.db, PIPE, args.nodes, "Idle", 120, [fleet])
        for round_ in range(args.death_rounds):
            doomed = f.agent(
                DOOMED, args.doomed_nodes, f"death-{round_ + 1}", frame_time=args.doomed_frame_time
            )
            doomed_agents.append(doomed)
            doomed.start()
            await farm.wait_nodes(f.db, DOOMED, args.doomed_nodes, "Idle", 60, [doomed])
            held = await give_doomed_work(f, jobs)
            if not held:
                result.notes.append(f"round {round_ + 1}: the doomed nodes got no range in time")
                doomed.kill()
                continue
            killed = doomed.kill()
            progress(
                f"node death: round {round_ + 1}: killed {args.doomed_nodes} nodes holding "
                f"{len(held)} ranges"
            )
            result.lost += await follow_lost(f, held, killed, timeout, daemon.log_path)
            # Let them be Offline and their work move before the next round starts.
            await asyncio.sleep(1.0)
        progress("node death: waiting for every job to end")
        if not await f.db.wait_terminal(jobs, args.timeout):
            result.notes.append("not every job ended in time")
        result.jobs = await f.db.steps(jobs)
    finally:
        fleet.kill()
        for a in doomed_agents:
            a.kill()
        daemon.stop()
    events = farm.agent_events([fleet.log_path])
    for lost in result.lost:
        replacement = await f.db.conn.fetchval(
            "SELECT id FROM frame_jobs WHERE replaces_id = $1", lost.range_id
        )
        if replacement is not None and replacement in events.received:
            lost.delivered = events.received[replacement][0]
    return result


async def give_doomed_work(f: Farm, jobs: list[UUID]) -> list[tuple[UUID, str, str]]:
    """Submit waves of jobs until every doomed node renders a range; the ranges they hold."""
    args = f.args
    wave = max(4, (args.nodes + args.doomed_nodes) // 3 + 1)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        rows = await f.db.conn.fetch(HELD_BY, DOOMED + "-%")
        pending = await f.db.conn.fetchval(
            "SELECT count(*) FROM frame_jobs WHERE status = 'Pending'"
        )
        rendering = {r["name"] for r in rows if r["status"] == "Rendering"}
        if len(rendering) >= args.doomed_nodes and pending == 0:
            # Every doomed node renders, and no other work waits: the replacements will find
            # idle nodes, so the figure is detection and reassignment, not a queue.
            return [(r["id"], r["name"], r["status"]) for r in rows]
        holders = {r["name"] for r in rows}
        if len(holders) < args.doomed_nodes and pending == 0:
            jobs += await f.api.submit_many(f.pick_projects(wave))
        await asyncio.sleep(0.3)
    rows = await f.db.conn.fetch(HELD_BY, DOOMED + "-%")
    return [(r["id"], r["name"], r["status"]) for r in rows]


async def follow_lost(
    f: Farm, held: list[tuple[UUID, str, str]], killed: float, timeout_sec: int, log: Path
) -> list[LostRange]:
    """Wait for every lost range's replacement to be assigned (or 3 timeouts + 30 s)."""
    ids = [r[0] for r in held]
    deadline = time.monotonic() + 3 * timeout_sec + 30
    rows: list[Any] = []
    while time.monotonic() < deadline:
        rows = await f.db.conn.fetch(
            "SELECT replaces_id, created_at, assigned_at FROM frame_jobs "
            "WHERE replaces_id = ANY($1::uuid[])",
            ids,
        )
        if len(rows) == len(ids) and all(r["assigned_at"] is not None for r in rows):
            break
        await asyncio.sleep(0.1)
    by_lost = {r["replaces_id"]: r for r in rows}
    names = {name for _, name, _ in held}
    node_ids = await f.db.node_ids(DOOMED + "-")
    offline: dict[str, float] = {}
    for when, node in h.offline_transitions(log):
        if when >= killed - 1:
            offline.setdefault(node, when)
    last_hb: dict[str, float] = {}
    for name in names:
        t = await f.db.conn.fetchval(
            "SELECT max(recorded_at) FROM node_health_samples WHERE node_id = $1 "
            "AND recorded_at <= to_timestamp($2)",
            node_ids[name],
            killed,
        )
        if t is not None:
            last_hb[name] = t.timestamp()
    lost = []
    for range_id, name, status in held:
        row = by_lost.get(range_id)
        lost.append(
            LostRange(
                range_id=range_id,
                node=name,
                status=status,
                last_heartbeat=last_hb.get(name),
                offline=offline.get(str(node_ids[name])),
                requeued=row["created_at"].timestamp() if row else None,
                reassigned=row["assigned_at"].timestamp() if row and row["assigned_at"] else None,
                delivered=None,
                killed=killed,
            )
        )
    return lost


# ------------------------------------------------------------------ dispatch burst and restart


@dataclass
class RestartSample:
    ready: float  # exec -> READY=1
    healthz: float  # exec -> first /healthz 200
    fleet: int | None
    active_jobs: int | None


@dataclass
class Burst:
    label: str
    ranges: int
    dispatched: int = 0
    rate: float = float("nan")  # ranges/s, first -> last assignment
    rate_after_contact: float = float("nan")  # once every node had heartbeated
    all_sec: float = float("nan")  # first node heartbeat -> last assignment
    peak_1s: int = 0
    first_contact_rate: float = float("nan")
    first_contact_sec: float = float("nan")
    heartbeats: int = 0
    stale_commands: int = 0  # RenderFrames of ranges requeued while the node was away
    intervals: Counter[float] = field(default_factory=Counter)
    daemon_cpu_pct: float = float("nan")
    postgres_cpu_pct: float = float("nan")


@dataclass
class MassDeath:
    nodes: int
    requeued: int
    first_offline: float
    last_offline: float
    last_requeued: float
    daemon_cpu_pct: float


@dataclass
class RestartResult:
    nodes: int
    jobs: int
    ranges: int = 0
    cold_start: float = float("nan")
    bursts: list[Burst] = field(default_factory=list)
    mass_death: MassDeath | None = None
    state_before_kill: dict[str, int] = field(default_factory=dict)
    samples: list[RestartSample] = field(default_factory=list)
    exit_code: int | None = None

    @property
    def best_burst(self) -> Burst | None:
        return max(self.bursts, key=lambda b: b.rate, default=None)


_JOBS_UP = re.compile(r"job system up: (\d+) active jobs")


def jobs_up(log: Path) -> int | None:
    found = _JOBS_UP.findall(log.read_text(errors="replace"))
    return int(found[-1]) if found else None


def fleet_up(log: Path) -> int | None:
    found = re.findall(r"fleet up: (\d+) node actors", log.read_text(errors="replace"))
    return int(found[-1]) if found else None


class HealthzPoller(threading.Thread):
    """GET /healthz every 5 ms from a thread until the first 200; its monotonic time."""

    def __init__(self, port: int) -> None:
        super().__init__(daemon=True)
        self.port = port
        self.ok_at: float | None = None
        self.stop = threading.Event()

    def run(self) -> None:
        request = f"GET /healthz HTTP/1.1\r\nHost: {HOST}\r\nConnection: close\r\n\r\n".encode()
        while not self.stop.is_set():
            try:
                with socket.create_connection((HOST, self.port), timeout=2) as s:
                    s.sendall(request)
                    head = s.recv(64)
                if head.startswith(b"HTTP/1.1 200"):
                    self.ok_at = time.monotonic()
                    return
            except OSError:
                pass
            time.sleep(0.005)


def timed_start(daemon: h.DaemonProcess, port: int) -> tuple[float, float]:
    """Start the daemon; (exec -> READY=1, exec -> first /healthz 200) in seconds."""
    poller = HealthzPoller(port)
    began = time.monotonic()
    poller.start()
    ready = daemon.start()
    poller.join(timeout=30)
    poller.stop.set()
    healthz = poller.ok_at - began if poller.ok_at is not None else float("nan")
    return ready, healthz


def sigkill(daemon: h.DaemonProcess) -> None:
    assert daemon.proc is not None
    daemon.proc.kill()
    daemon.proc.wait()
    daemon.stop()  # closes the notify socket; the process is already gone


async def restart_phase(f: Farm) -> RestartResult:
    args = f.args
    result = RestartResult(args.restart_nodes, args.restart_jobs)
    await f.all_offline()
    progress(f"restart: registering {args.restart_nodes} nodes in bulk")
    ids = await h.register_nodes(f.env.db_url, args.restart_nodes)
    config = f.config(
        "restart",
        {"heartbeat_interval_sec": 5, "busy_heartbeat_interval_sec": 1,
         "heartbeat_timeout_sec": 15},
        {"min_chunk_frames": 10, "max_chunk_frames": 10},
    )  # fmt: skip
    daemon = f.daemon(config, "restart")
    try:
        result.cold_start, _ = timed_start(daemon, f.env.port)
        if not f.catalog_ready:
            await setup_catalog(f)
        # Replicas exist after the pipeline's warm-up; without it, rows stand for them (these
        # nodes never download one, and a presigned url needs no object).
        await f.db.conn.execute(
            "INSERT INTO replicas (saved_project_id, project_version, storage_key) "
            "SELECT saved_project_id, version, 'replicas/' || saved_project_id || '/' || version "
            "|| '.aep' FROM catalog_projects WHERE saved_project_id = ANY($1::uuid[]) "
            "ON CONFLICT DO NOTHING",
            f.restart_projects,
        )
        progress(f"restart: {args.restart_jobs} jobs of {RESTART_FRAMES} frames, no node up yet")
        projects = [
            f.restart_projects[i % len(f.restart_projects)] for i in range(args.restart_jobs)
        ]
        jobs = await f.api.submit_many(projects)
        want = args.restart_jobs * (RESTART_FRAMES // 10)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            pending = await f.db.conn.fetchval(
                "SELECT count(*) FROM frame_jobs WHERE job_id = ANY($1::uuid[]) "
                "AND status = 'Pending'",
                jobs,
            )
            if pending >= want:
                break
            await asyncio.sleep(0.25)
        result.ranges = int(pending)
        fleet = WorkingFleet(SimFleet.create(ids, f.env.node_master_key, f.env.port).nodes)
        quiet_at = time.time()
        result.bursts.append(
            await dispatch_burst(f, daemon, fleet, jobs, 1, result.ranges, keep_alive=False)
        )
        result.mass_death = await mass_death(f, daemon, jobs, result.ranges, quiet_at)
        result.bursts.append(
            await dispatch_burst(f, daemon, fleet, jobs, 2, result.ranges, keep_alive=True)
        )
        result.state_before_kill = await restart_state(f, jobs)
        for i in range(args.restarts):
            sigkill(daemon)
            progress(f"restart: SIGKILL and start again ({i + 1}/{args.restarts})")
            ready, healthz = timed_start(daemon, f.env.port)
            result.samples.append(
                RestartSample(ready, healthz, fleet_up(daemon.log_path), jobs_up(daemon.log_path))
            )
            await asyncio.sleep(2.0)  # well within the 15 s heartbeat timeout: state unchanged
    finally:
        result.exit_code = daemon.stop()
    return result


async def restart_state(f: Farm, jobs: list[UUID]) -> dict[str, int]:
    row = await f.db.conn.fetchrow(
        "SELECT (SELECT count(*) FROM nodes) AS nodes, "
        "(SELECT count(*) FROM nodes WHERE status = 'Busy') AS busy, "
        "(SELECT count(*) FROM render_jobs WHERE step NOT IN "
        "   ('Completed', 'Failed', 'Cancelled')) AS active_jobs, "
        "(SELECT count(*) FROM frame_jobs WHERE job_id = ANY($1::uuid[]) "
        "   AND status = 'Assigned') AS assigned_ranges, "
        "(SELECT count(*) FROM node_commands WHERE acked_at IS NULL) AS unacked_commands",
        jobs,
    )
    return {k: int(v) for k, v in dict(row).items()}


@dataclass
class WorkingFleet(SimFleet):
    """``bench.heartbeats``' nodes, reporting the job of the range they were given as in hand
    (``current_job_id``), as a rendering node does: the daemon releases work that a node which
    acknowledged it keeps saying it does not have.

    A ``RenderFrames`` of an older attempt than the burst's is counted in ``stale`` and not
    taken up: its range was requeued while the node was away, and an agent would drop it at
    its first frame report (409 ``stale_assignment``)."""

    attempt: int = 1
    stale: set[str] = field(default_factory=set)

    def on_answer(self, index: int, status: int, body: bytes) -> None:
        if status == 200:
            self._took(index, body)
        super().on_answer(index, status, body)

    def open_loop_nodes(self) -> list[lg.OpenLoopNode]:
        def make(index: int) -> lg.OpenLoopNode:
            node = self.nodes[index]

            def interval(status: int, body: bytes) -> float:
                self._took(index, body)
                seconds = node.answered(body)
                self.intervals[seconds] += 1
                return seconds

            return lg.OpenLoopNode(node.next_request, interval)

        return [make(i) for i in range(len(self.nodes))]

    def _took(self, index: int, body: bytes) -> None:
        node = self.nodes[index]
        for command in json.loads(body).get("pending_commands") or []:
            if command.get("type") != "RenderFrames":
                continue
            if int(command.get("attempt", 1)) < self.attempt:
                self.stale.add(str(command["id"]))
                continue
            node.fields.update(status="Busy", current_job_id=command["job_id"])
            node.body = b""  # encoded (and so signed) anew

    def reboot(self) -> None:
        """Every node comes back with nothing in hand."""
        for node in self.nodes:
            node.fields.update(status="Idle", current_job_id=None)
            node.acks = []
            node.body = b""


def start_py_spy(f: Farm, daemon: h.DaemonProcess, name: str) -> subprocess.Popen[bytes] | None:
    """py-spy recording the daemon (collapsed stacks, with idle) until :func:`stop_py_spy`."""
    if not f.args.py_spy:
        return None
    out = f.env.root / f"{name}.collapsed"
    proc = subprocess.Popen(
        [f.args.py_spy, "record", "--pid", str(daemon.pid), "--rate", "200", "--nonblocking",
         "--format", "raw", "--output", str(out)],
        stdout=subprocess.DEVNULL,
        stderr=(f.env.root / f"{name}.py-spy.log").open("wb"),
    )  # fmt: skip
    progress(f"py-spy recording the daemon into {out}")
    time.sleep(0.5)  # attached before the work begins
    return proc


def stop_py_spy(proc: subprocess.Popen[bytes] | None) -> None:
    if proc is not None:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()


async def dispatch_burst(
    f: Farm,
    daemon: h.DaemonProcess,
    fleet: WorkingFleet,
    jobs: list[UUID],
    attempt: int,
    ranges: int,
    *,
    keep_alive: bool,
) -> Burst:
    """Every node heartbeats once (``keep_alive``: and then as told) while the scheduler hands
    out the ``attempt``-th ranges of ``jobs``."""
    label = "nodes heartbeat as told" if keep_alive else "nodes silent after one heartbeat"
    burst = Burst(label, ranges)
    progress(f"restart: {len(fleet.nodes)} nodes come up ({label}); {ranges} ranges to hand out")
    fleet.intervals.clear()
    fleet.reboot()
    fleet.attempt = attempt
    fleet.stale.clear()
    meter = h.CpuMeter(daemon, f.env.pg).start()
    spy = start_py_spy(f, daemon, f"dispatch-{'storm' if keep_alive else 'quiet'}")
    began = time.time()
    first = await lg.closed_loop(
        "first contact",
        HOST,
        f.env.port,
        50,
        fleet.once_each(list(range(len(fleet.nodes)))),
        duration=None,
        on_answer=fleet.on_answer,
    )
    contact_done = time.time()
    burst.first_contact_rate = first.rate
    burst.first_contact_sec = contact_done - began
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and await assigned_count(f, jobs, attempt) < ranges:
        if not keep_alive:
            await asyncio.sleep(0.2)
            if time.time() - began > 12:  # the nodes' deadlines (15 s) come next
                break
            continue
        await lg.open_loop(
            "keep alive",
            HOST,
            f.env.port,
            50,
            fleet.open_loop_nodes(),
            # Everyone once within the first 4.5 s of each 5 s chunk: no node goes 15 s unheard.
            [0.9 * due for due in fleet.staggered_first_due(5.0)],
            duration=5.0,
            warmup=0.0,
        )
    meter.stop()
    stop_py_spy(spy)
    burst.heartbeats = sum(fleet.intervals.values())
    burst.stale_commands = len(fleet.stale)
    burst.intervals = Counter(fleet.intervals)
    burst.daemon_cpu_pct = meter.pct(meter.daemon_sec)
    burst.postgres_cpu_pct = meter.pct(meter.postgres_sec)
    times = sorted(
        r["assigned_at"].timestamp()
        for r in await f.db.conn.fetch(
            "SELECT assigned_at FROM frame_jobs WHERE job_id = ANY($1::uuid[]) "
            "AND attempt = $2 AND assigned_at IS NOT NULL",
            jobs,
            attempt,
        )
    )
    burst.dispatched = len(times)
    if len(times) > 1:
        burst.rate = (len(times) - 1) / (times[-1] - times[0])
        burst.all_sec = times[-1] - began
        burst.peak_1s = peak_per_second(times)
        after = [t for t in times if t >= contact_done]
        if len(after) > 1:
            burst.rate_after_contact = len(after) / (after[-1] - contact_done)
    return burst


def peak_per_second(times: list[float]) -> int:
    peak, j = 0, 0
    for i, t in enumerate(times):
        while times[j] < t - 1.0:
            j += 1
        peak = max(peak, i - j + 1)
    return peak


async def assigned_count(f: Farm, jobs: list[UUID], attempt: int) -> int:
    return int(
        await f.db.conn.fetchval(
            "SELECT count(*) FROM frame_jobs WHERE job_id = ANY($1::uuid[]) "
            "AND attempt = $2 AND assigned_at IS NOT NULL",
            jobs,
            attempt,
        )
    )


async def mass_death(
    f: Farm, daemon: h.DaemonProcess, jobs: list[UUID], ranges: int, since: float
) -> MassDeath:
    """The silent nodes time out together: until every range they held is requeued."""
    progress(f"restart: {f.args.restart_nodes} silent nodes time out; their ranges are requeued")
    meter = h.CpuMeter(daemon, f.env.pg).start()
    spy = start_py_spy(f, daemon, "mass-node-loss")
    deadline = time.monotonic() + 120
    requeued = 0
    while time.monotonic() < deadline:
        requeued = int(
            await f.db.conn.fetchval(
                "SELECT count(*) FROM frame_jobs WHERE job_id = ANY($1::uuid[]) AND attempt = 2",
                jobs,
            )
        )
        if requeued >= ranges:
            break
        await asyncio.sleep(0.25)
    meter.stop()
    stop_py_spy(spy)
    last = await f.db.conn.fetchval(
        "SELECT max(created_at) FROM frame_jobs WHERE job_id = ANY($1::uuid[]) AND attempt = 2",
        jobs,
    )
    offline = sorted(t for t, _ in h.offline_transitions(daemon.log_path) if t >= since)
    return MassDeath(
        nodes=len(offline),
        requeued=requeued,
        first_offline=offline[0] if offline else float("nan"),
        last_offline=offline[-1] if offline else float("nan"),
        last_requeued=last.timestamp() if last else float("nan"),
        daemon_cpu_pct=meter.pct(meter.daemon_sec),
    )


# ------------------------------------------------------------------ report


def dist_row(label: str, values: list[float]) -> list[str]:
    return [
        label,
        str(len(values)),
        sec(pct(values, 50)),
        sec(pct(values, 90)),
        sec(pct(values, 99)),
        sec(max(values) if values else float("nan")),
    ]


DIST_HEADER = ["seconds", "n", "p50", "p90", "p99", "max"]


def report_pipeline(results: list[PipelineResult]) -> None:
    for r in results:
        print()
        print(
            f"-- pipeline {r.name}: frame time {r.frame_time}s, busy_heartbeat_interval_sec "
            f"{r.busy_interval} (heartbeat_interval_sec 5), daemon ready in {r.startup_sec:.1f}s --"
        )
        for label, lf in (("light load", r.light), ("saturating load", r.saturated)):
            if lf is None:
                continue
            print(
                f"{label}: {lf.jobs} jobs ({fmt_steps(lf.steps)}), {lf.ranges} ranges "
                f"({lf.requeued} requeued), {lf.frames} frames; makespan {lf.makespan:.1f}s; "
                f"dispatched {lf.dispatch_rate:.1f} ranges/s (peak {lf.dispatch_peak_1s} in 1 s)"
                + (
                    f"; CPU daemon {r.cpu[0]:.0f}%, PostgreSQL {r.cpu[1]:.0f}%, agent "
                    f"{r.machine[1]:.0f}% of a core; all {os.cpu_count()} cores "
                    f"{r.machine[0]:.0f}% busy"
                    if lf is r.saturated
                    else ""
                )
            )
            rows = [
                dist_row("ready -> assigned (queue + scheduler)", lf.ready_to_assigned),
                dist_row("assigned -> delivered (heartbeat answer)", lf.assigned_to_delivered),
                dist_row("ready -> delivered", lf.ready_to_delivered),
            ]
            if lf.node_gaps:
                rows.append(dist_row("node: range done -> next delivered", lf.node_gaps))
            print(table(rows, DIST_HEADER))
            if lf.delivered < lf.assigned:
                print(f"  ({lf.assigned - lf.delivered} assigned ranges never reached a node)")


def fmt_steps(steps: dict[str, int]) -> str:
    return ", ".join(f"{v} {k}" for k, v in sorted(steps.items()))


def probe_table(probe: cp.ProbeResults) -> str:
    by_kind: dict[str, list[float]] = {}
    for sample in probe.samples:
        by_kind.setdefault(sample.kind, []).append(sample.latency)
    everything = [sample.latency for sample in probe.samples]
    rows = [["all crash POSTs", str(len(everything))] + latency_cells(everything)]
    for kind, values in sorted(by_kind.items()):
        rows.append([f"  {kind}", str(len(values))] + latency_cells(values))
    return table(rows, ["ms", "n", "p50", "p90", "p99", "max"])


def latency_cells(values: list[float]) -> list[str]:
    return [ms(pct(values, q)) for q in (50, 90, 99)] + [ms(max(values, default=float("nan")))]


def report_crashes(results: list[PipelineResult]) -> None:
    print()
    print("-- crash reports --")
    for r in results:
        for when, probe in (("under the saturating load", r.probe), ("at rest", r.probe_rest)):
            if probe is None:
                continue
            print(f"crash probe {when} ({r.name}; own signed client, request written -> answer):")
            print(probe_table(probe))
            actions = Counter(f"{s.kind}: {s.action}" for s in probe.samples)
            print("  answers: " + "; ".join(f"{k} x{v}" for k, v in sorted(actions.items())))
            if probe.errors:
                print(f"  probe errors ({len(probe.errors)}): {probe.errors[:3]}")
    for r in results:
        if r.agent_crashes:
            values = [v for v, _ in r.agent_crashes]
            acts = Counter(a for _, a in r.agent_crashes)
            print(
                f"agents' own crash reports, {r.name} (frame time {r.frame_time}s), from their "
                f"logs (POST sent -> answer, incl. the agent's own event loop): n {len(values)}, "
                f"p50 {ms(pct(values, 50))} ms, p99 {ms(pct(values, 99))} ms, max "
                f"{ms(max(values))} ms; " + ", ".join(f"{k} x{v}" for k, v in sorted(acts.items()))
            )


def report_death(d: DeathResult) -> None:
    print()
    print(
        f"-- node death: heartbeat_interval_sec {d.interval}, heartbeat_timeout_sec {d.timeout}; "
        f"{len(d.lost)} ranges lost with their nodes; jobs: {fmt_steps(d.jobs)} --"
    )
    rows = []
    for lost in d.lost:

        def rel(t: float | None, base: float = lost.killed) -> str:
            return "-" if t is None else f"{t - base:.2f}"

        rows.append(
            [
                f"{lost.node} {str(lost.range_id)[:8]} ({lost.status})",
                rel(lost.last_heartbeat),
                rel(lost.offline),
                rel(lost.requeued),
                rel(lost.reassigned),
                rel(lost.delivered),
                rel(lost.reassigned, lost.last_heartbeat or lost.killed),
            ]
        )
    print(
        table(
            rows,
            ["lost range (s from the kill)", "last hb", "Offline", "requeued", "reassigned",
             "delivered", "last hb -> reassigned"],
        )
    )  # fmt: skip
    for note in d.notes:
        print(f"  note: {note}")


def report_restart(r: RestartResult) -> None:
    print()
    print(f"-- dispatch burst and restart: {r.nodes} bulk nodes, {r.jobs} jobs --")
    print(f"first start (no active job): ready in {r.cold_start:.2f}s; {r.ranges} ranges pending")
    for b in r.bursts:
        asked = ", ".join(f"{k:g}s x{v}" for k, v in sorted(b.intervals.items()))
        print(
            f"dispatch, {b.label}: {b.dispatched} of {b.ranges} ranges assigned, "
            f"{b.rate:.0f} ranges/s first->last, {b.rate_after_contact:.0f}/s once every node "
            f"had heartbeated (peak {b.peak_1s} in 1 s); {b.all_sec:.1f}s from the first heartbeat "
            f"to the last assignment; first contact {b.first_contact_sec:.1f}s "
            f"({b.first_contact_rate:.0f} hb/s); {b.heartbeats} heartbeats answered "
            f"(next_heartbeat_in_sec: {asked}); CPU daemon {b.daemon_cpu_pct:.0f}%, "
            f"PostgreSQL {b.postgres_cpu_pct:.0f}% of a core"
            + (
                f"; {b.stale_commands} stale RenderFrames delivered (ranges requeued while "
                "their node was away)"
                if b.stale_commands
                else ""
            )
        )
    m = r.mass_death
    if m is not None:
        print(
            f"mass node loss: {m.nodes} silent nodes went Offline within "
            f"{m.last_offline - m.first_offline:.1f}s; {m.requeued} ranges requeued, the last "
            f"{m.last_requeued - m.first_offline:.1f}s after the first Offline "
            f"({m.last_requeued - m.last_offline:.1f}s after the last); daemon CPU "
            f"{m.daemon_cpu_pct:.0f}%"
        )
    print(f"state at the first SIGKILL: {r.state_before_kill}")
    rows = [
        [
            f"restart {i + 1}",
            sec(s.ready),
            sec(s.healthz),
            str(s.fleet),
            str(s.active_jobs),
        ]
        for i, s in enumerate(r.samples)
    ]
    print(table(rows, ["after SIGKILL", "exec->READY=1 s", "exec->/healthz s", "node actors",
                       "job actors"]))  # fmt: skip
    if r.exit_code not in (0, None):
        print(f"  warning: the daemon's final SIGTERM exit code was {r.exit_code}")


def target_rows(
    args: argparse.Namespace,
    pipes: list[PipelineResult],
    death: DeathResult | None,
    restart: RestartResult | None,
) -> list[list[str]]:
    rows: list[list[str]] = []
    full_scale = args.jobs >= 200 and args.nodes >= 50
    if restart is not None and restart.best_burst is not None:
        for b in restart.bursts:
            rows.append(
                [
                    f"ranges dispatched/s > {TARGET_DISPATCH_PER_SEC:.0f} (Tractor's claim), "
                    + ("nodes quiet" if "silent" in b.label else "nodes heartbeating"),
                    f"{b.rate:.0f}/s ({b.rate_after_contact:.0f}/s after first contact; "
                    f"{restart.nodes} nodes, {b.ranges} ranges)",
                    verdict(b.rate > TARGET_DISPATCH_PER_SEC),
                ]
            )
    for p in pipes:
        if p.saturated is not None:
            s = p.saturated
            rows.append(
                [
                    f"  sustained, {p.name} ({s.jobs} jobs, {args.nodes} nodes)",
                    f"{s.dispatch_rate:.1f}/s, peak {s.dispatch_peak_1s} in 1 s",
                    "info",
                ]
            )
    for p in pipes:
        for label, lf in (("light", p.light), ("saturating", p.saturated)):
            if lf is None:
                continue
            rows.append(
                [
                    f"ready -> delivered, {p.name}, {label} load",
                    f"p50 {sec(pct(lf.ready_to_delivered, 50))} s, "
                    f"p99 {sec(pct(lf.ready_to_delivered, 99))} s; heartbeat part "
                    f"p50 {sec(pct(lf.assigned_to_delivered, 50))}, "
                    f"p99 {sec(pct(lf.assigned_to_delivered, 99))}"
                    + (
                        f"; node turnaround p50 {sec(pct(lf.node_gaps, 50))}"
                        if lf.node_gaps
                        else ""
                    ),
                    "info",
                ]
            )
    if death is not None:
        limit = death.timeout + TARGET_REASSIGN_SLACK_SEC
        values = [x.reassigned - x.killed for x in death.lost if x.reassigned is not None]
        missing = sum(1 for x in death.lost if x.reassigned is None)
        worst = max(values) if values else float("nan")
        ok = bool(values) and missing == 0 and worst <= limit
        rows.append(
            [
                f"node death -> reassigned <= timeout + 1 s ({death.timeout}+1 s)",
                f"max {sec(worst)} s, p50 {sec(pct(values, 50))} s over {len(values)} ranges"
                + (f", {missing} never reassigned" if missing else ""),
                verdict(ok if death.lost else None),
            ]
        )
    for p in pipes:
        for when, probe in (("under load", p.probe), ("at rest", p.probe_rest)):
            if probe is None or not probe.samples:
                continue
            values = [s.latency for s in probe.samples]
            rows.append(
                [
                    f"crash report answer p99 < {TARGET_CRASH_P99_SEC * 1000:.0f} ms, {when}",
                    f"p99 {ms(pct(values, 99))} ms, p50 {ms(pct(values, 50))} ms "
                    f"({len(values)} reports)",
                    verdict(pct(values, 99) < TARGET_CRASH_P99_SEC, full_scale),
                ]
            )
        if p.agent_crashes:
            values = [v for v, _ in p.agent_crashes]
            rows.append(
                [
                    f"  as the agents saw it, {p.name}",
                    f"p99 {ms(pct(values, 99))} ms, p50 {ms(pct(values, 50))} ms "
                    f"({len(values)} reports)",
                    "info",
                ]
            )
    if restart is not None and restart.samples:
        worst = max(max(s.ready, s.healthz) for s in restart.samples)
        at_scale = restart.nodes >= TARGET_RESTART_NODES and restart.jobs >= TARGET_RESTART_JOBS
        rows.append(
            [
                f"restart -> ready < {TARGET_RESTART_SEC:.0f} s "
                f"({TARGET_RESTART_NODES} nodes, {TARGET_RESTART_JOBS} active jobs)",
                f"worst {sec(worst)} s of {len(restart.samples)} (READY=1 and /healthz; "
                f"here {restart.nodes} bulk nodes, {restart.jobs} jobs)",
                verdict(worst < TARGET_RESTART_SEC, at_scale),
            ]
        )
    return rows


def report(
    args: argparse.Namespace,
    pipes: list[PipelineResult],
    death: DeathResult | None,
    restart: RestartResult | None,
    wall: float,
) -> None:
    print()
    print(
        f"== bench.pipeline: {args.jobs} jobs over {args.nodes} simulated nodes, frame time "
        f"{args.frame_time}s, agent crash rate {args.crash_rate}; {wall:.0f}s in all =="
    )
    code = args.code_at_start
    if args.code_at_end != code:
        code += f" at the start, {args.code_at_end} at the end: phases ran different code!"
    print(f"flatrender code: {code}")
    report_pipeline(pipes)
    if pipes:
        report_crashes(pipes)
    if death is not None:
        report_death(death)
    if restart is not None:
        report_restart(restart)
    print()
    print(
        table(
            target_rows(args, pipes, death, restart),
            ["target (issue 4)", "measured", "verdict"],
            text_columns=3,
        )
    )
    print("(a verdict in parentheses: this run was smaller than the target names)")


# ------------------------------------------------------------------ runs


def code_version() -> str:
    """The commit under test (and whether the tree differs from it), or "unknown"."""
    root = Path(__file__).resolve().parent.parent
    try:
        head = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(root), "status", "--porcelain", "--", "flatrender"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return head + (" (flatrender/ modified)" if dirty else "")


async def run(args: argparse.Namespace, env: h.Environment) -> None:
    began = time.monotonic()
    args.code_at_start = code_version()
    secrets = farm.secrets_of(env)
    api = farm.Api(env.port, secrets, uuid4())
    db = await farm.Db.connect(env.db_url)
    f = Farm(
        args,
        env,
        secrets,
        api,
        db,
        pipeline_projects=farm.new_ids(len(PIPELINE_FRAMES)),
        restart_projects=farm.new_ids(4),
    )
    pipes: list[PipelineResult] = []
    death: DeathResult | None = None
    restart: RestartResult | None = None
    try:
        if not args.skip_pipeline:
            pipes.append(
                await pipeline_phase(
                    f, "short", 1, args.jobs, frame_time=args.frame_time,
                    crash_rate=args.crash_rate, probe=True, light=True,
                )
            )  # fmt: skip
        if not args.skip_compare:
            for busy in (1, 5):
                pipes.append(
                    await pipeline_phase(
                        f, f"long-busy{busy}", busy, args.compare_jobs,
                        frame_time=args.compare_frame_time, crash_rate=0.0,
                    )
                )  # fmt: skip
        if not args.skip_death:
            death = await death_phase(f)
        if not args.skip_restart:
            restart = await restart_phase(f)
    finally:
        await api.close()
        await db.close()
    args.code_at_end = code_version()
    report(args, pipes, death, restart, time.monotonic() - began)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m bench.pipeline",
        description="Short render jobs over simulated nodes against one flatrender daemon "
        "(issue 4): dispatch rate, ready->delivered latency, node death, crash answers, restart.",
    )
    p.add_argument("--jobs", type=int, help="jobs of the saturating load (200; quick 40)")
    p.add_argument("--nodes", type=int, help="simulated nodes (50; quick 20)")
    p.add_argument("--compare-jobs", type=int, help="jobs of each busy-interval run (50; quick 20)")
    p.add_argument(
        "--compare-frame-time",
        type=float,
        default=0.5,
        help="frame time of the busy-interval runs: ranges outlast a heartbeat (0.5)",
    )
    p.add_argument("--light-jobs", type=int, help="jobs one by one, nodes idle (12; quick 6)")
    p.add_argument("--frame-time", type=float, default=0.02, help="seconds per frame (0.02)")
    p.add_argument(
        "--crash-rate", type=float, default=0.05, help="agents' AE crashes per range (0.05)"
    )
    p.add_argument("--probe-nodes", type=int, help="crash probe nodes (20; quick 8; 0: none)")
    p.add_argument("--doomed-nodes", type=int, help="nodes killed per death round (4; quick 3)")
    p.add_argument("--death-rounds", type=int, help="kills (2; quick 1)")
    p.add_argument("--death-timeout", type=int, default=3, help="heartbeat timeout there (3)")
    p.add_argument(
        "--doomed-frame-time", type=float, default=1.0, help="the doomed nodes' frame time (1.0)"
    )
    p.add_argument("--restart-nodes", type=int, help="bulk nodes for the restart (1000)")
    p.add_argument("--restart-jobs", type=int, help="active jobs for the restart (200)")
    p.add_argument("--restarts", type=int, help="SIGKILL + start cycles (3; quick 2)")
    p.add_argument(
        "--timeout", type=float, default=600.0, help="longest wait for a load to end (600 s)"
    )
    p.add_argument("--skip-pipeline", action="store_true", help="no 200-short-jobs run")
    p.add_argument("--skip-compare", action="store_true", help="no busy-interval comparison")
    p.add_argument("--skip-death", action="store_true", help="no node-death phase")
    p.add_argument("--skip-restart", action="store_true", help="no dispatch burst / restart")
    p.add_argument("--quick", action="store_true", help="a smaller run of every phase")
    p.add_argument(
        "--py-spy",
        metavar="PATH",
        help="py-spy executable: record the daemon during the dispatch burst (kept folder)",
    )
    p.add_argument("--keep", action="store_true", help="keep the temporary folder (logs)")
    args = p.parse_args(argv)
    q = args.quick
    defaults = {
        "jobs": (200, 40),
        "compare_jobs": (50, 20),
        "nodes": (50, 20),
        "light_jobs": (12, 6),
        "probe_nodes": (20, 8),
        "doomed_nodes": (4, 3),
        "death_rounds": (2, 1),
        "restart_nodes": (TARGET_RESTART_NODES, TARGET_RESTART_NODES),
        "restart_jobs": (TARGET_RESTART_JOBS, TARGET_RESTART_JOBS),
        "restarts": (3, 2),
    }
    for name, (full, quick) in defaults.items():
        if getattr(args, name) is None:
            setattr(args, name, quick if q else full)
    if min(args.jobs, args.nodes, args.light_jobs, args.doomed_nodes) < 1:
        p.error("--jobs, --nodes, --light-jobs and --doomed-nodes must be positive")
    if args.death_timeout < 2:
        p.error("--death-timeout must be at least 2")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        progress("starting PostgreSQL and S3")
        with h.environment(keep=args.keep) as env:
            asyncio.run(run(args, env))
    except KeyboardInterrupt:
        progress("interrupted; everything was stopped")
        return 130
    except (h.HarnessError, farm.ApiError, OSError) as e:
        print(f"bench.pipeline: harness failed: {e}", file=sys.stderr)
        return 1
    return 0


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


if __name__ == "__main__":
    raise SystemExit(main())
