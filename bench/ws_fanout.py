"""Progress WebSocket fan-out benchmark (issue 6): 1,000 watchers over 100 rendering jobs.

Run::

    .venv/bin/python -m bench.ws_fanout            # 1,000 watchers, 100 jobs (about 3 minutes)
    .venv/bin/python -m bench.ws_fanout --quick    # 200 watchers, 20 jobs
    .venv/bin/python -m bench.ws_fanout --help

Everything is real: embedded PostgreSQL and S3, ``flatrender serve`` as a subprocess,
``flatrender agent`` subprocesses whose nodes report every frame. Each job is one range on one
node (``min_chunk_frames`` = the job's frames, no trims), so a job's ``current_frame`` is the
last frame its node reported, and a watcher's message with ``current_frame >= f`` is the first
to show frame ``f``. The watchers (``--watchers`` / ``--jobs`` per job) are trio-websocket
clients in this process.

Phases: the nodes come up, a warm-up job builds the project's replica, ``--jobs`` jobs are
submitted and start rendering; a *baseline* window with no watchers measures the daemon's CPU for
the frame reports alone; the watchers connect (each gets its snapshot); the *measured* window
counts every delivered message; then every job is cancelled and each watcher must get the final
``Cancelled`` message and close 1000.

Figures: delivered messages/s; latency from a frame report to its receipt by each watcher of the
job (p50/p99/max, from the node's ``completed_at``, i.e. just before it sends the report, and
from PostgreSQL's ``received_at``, the start of the report's commit); daemon CPU (% of one core)
in both windows and CPU per delivered message (total, and the part above the baseline); the
slowest watcher's messages per second (at most 10 by design); drops (1013). The machine is
shared and noisy (2 cores for the daemon, PostgreSQL, the agents and the watchers alike):
compare figures of one run.
"""

from __future__ import annotations

import argparse
import asyncio
import bisect
import json
import math
import os
import sys
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from uuid import UUID, uuid4

import asyncpg
import httpx
import trio
from trio_websocket import ConnectionClosed, open_websocket_url

from bench import _farm as farm
from bench import _harness as h
from bench._loadgen import percentile
from flatrender.http.auth import mint_token

TARGET_P99_SEC = 0.5


@dataclass
class Watcher:
    job: UUID
    received: list[tuple[float, int | None, str]] = field(default_factory=list)  # time, frame, step
    close_code: int | None = None
    closed_at: float | None = None


@dataclass
class Machine:
    """CPU of the whole machine and of the agents over a window (the other load on the box)."""

    agent_pids: list[int]
    wall: float = 0.0
    busy_cores: float = 0.0  # all processes, in cores
    agents_cores: float = 0.0
    _t0: float = 0.0
    _stat0: tuple[int, int] = (0, 0)
    _agents0: int = 0

    def start(self) -> Machine:
        self._t0, self._stat0 = time.monotonic(), _proc_stat()
        self._agents0 = sum(h.proc_cpu_ticks(p) for p in self.agent_pids)
        return self

    def stop(self) -> Machine:
        self.wall = time.monotonic() - self._t0
        busy, total = _proc_stat()
        cores = os.cpu_count() or 1
        share = (busy - self._stat0[0]) / max(total - self._stat0[1], 1)
        self.busy_cores = share * cores
        agents = sum(h.proc_cpu_ticks(p) for p in self.agent_pids) - self._agents0
        self.agents_cores = agents / h.CLK_TCK / max(self.wall, 1e-9)
        return self


def _proc_stat() -> tuple[int, int]:
    """(busy, total) jiffies of all CPUs from /proc/stat."""
    values = [int(v) for v in Path("/proc/stat").read_text().split("\n")[0].split()[1:]]
    idle = values[3] + values[4]  # idle + iowait
    return sum(values) - idle, sum(values)


@dataclass
class Run:
    jobs: list[UUID]
    watchers: list[Watcher]
    baseline: h.CpuMeter | None = None
    measured: h.CpuMeter | None = None
    machine: Machine | None = None
    window: tuple[float, float] = (0.0, 0.0)
    baseline_window: tuple[float, float] = (0.0, 0.0)
    connect_sec: float = 0.0
    cancelled_at: dict[UUID, float] = field(default_factory=dict)  # when each cancel answered


def progress(text: str) -> None:
    print(f"[ws_fanout] {text}", file=sys.stderr, flush=True)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m bench.ws_fanout", description=__doc__.split("\n")[0]
    )
    p.add_argument("--watchers", type=int, default=1000)
    p.add_argument("--jobs", type=int, default=100)
    p.add_argument("--frame-time", type=float, default=0.5, help="seconds per frame (0.5)")
    p.add_argument("--window", type=float, default=30.0, help="measured seconds (30)")
    p.add_argument("--baseline", type=float, default=10.0, help="seconds without watchers (10)")
    p.add_argument("--agents", type=int, default=4, help="agent processes for the nodes (4)")
    p.add_argument("--quick", action="store_true", help="200 watchers over 20 jobs, 15 s")
    p.add_argument("--keep", action="store_true", help="keep the temporary folder (logs)")
    args = p.parse_args(argv)
    if args.quick:
        args.watchers, args.jobs, args.window, args.baseline = 200, 20, 15.0, 5.0
    return args


def frames_needed(args: argparse.Namespace) -> int:
    """Enough frames that every job still renders when the measured window ends."""
    seconds = 60 + args.baseline + args.window + args.watchers / 50
    return int(seconds / args.frame_time)


# ------------------------------------------------------------------ the measured run (trio)


async def measure(
    args: argparse.Namespace, env: h.Environment, daemon: h.DaemonProcess, agent_pids: list[int]
) -> Run:
    secrets = farm.secrets_of(env)
    user = uuid4()
    user_token = mint_token(secrets.jwt_secret, user, ttl_sec=6 * 3600)
    service = farm.bearer(secrets.service_token)
    mine = farm.bearer(user_token)
    frames = frames_needed(args)
    limits = httpx.Limits(max_connections=16, max_keepalive_connections=16)
    async with httpx.AsyncClient(
        base_url=f"http://127.0.0.1:{env.port}", timeout=30, limits=limits
    ) as http:

        async def call(method: str, path: str, headers: dict[str, str], body: Any = None) -> Any:
            r = await http.request(method, path, json=body, headers=headers)
            if r.status_code >= 300:
                raise h.HarnessError(f"{method} {path}: HTTP {r.status_code} {r.text[:300]}")
            return r.json()

        async def idle_nodes() -> int:
            return len((await call("GET", "/v1/nodes?status=Idle", service))["data"])

        async def wait(what: str, check: Any, within: float) -> None:
            with trio.move_on_after(within):
                # Polling the daemon over HTTP: it has no event to wait on.
                while not await check():  # noqa: ASYNC110
                    await trio.sleep(0.5)
                return
            raise h.HarnessError(f"timed out waiting for {what}")

        project = uuid4()
        await call(
            "PUT",
            f"/v1/catalog/projects/{project}",
            service,
            {
                "owner_user_id": str(user),
                "name": "ws fan-out",
                "template_md5": project.hex,
                "template_url": "demo://bench",
                "ae_version": "2024",
                "frame_rate": 30,
                "total_frames": frames,
                "duration_sec": frames / 30,
                "scenes": [{"scene_key": "all", "start_frame": 0, "end_frame": frames - 1}],
            },
        )
        await call("POST", f"/v1/billing/accounts/{user}/credit", service, {"amount_minor": 10**9})
        progress(f"waiting for {args.jobs} nodes")
        await wait("the nodes", lambda: _at_least(idle_nodes, args.jobs), 120)

        async def step_of(job: UUID) -> str:
            return str((await call("GET", f"/v1/renders/{job}/progress", mine))["step"])

        progress("warm-up job: the project's replica")
        body = {"saved_project_id": str(project), "quality": "Low", "resolution": "HD"}
        warm = UUID((await call("POST", "/v1/renders", mine, body))["id"])
        await wait("the replica", lambda: _equals(step_of, warm, "Rendering"), 120)
        await call("POST", f"/v1/renders/{warm}/cancel", mine, {})
        await wait("the nodes again", lambda: _at_least(idle_nodes, args.jobs), 60)

        progress(f"submitting {args.jobs} jobs of {frames} frames")
        jobs = [
            UUID((await call("POST", "/v1/renders", mine, body))["id"]) for _ in range(args.jobs)
        ]

        async def all_rendering() -> bool:
            for job in jobs:
                p = await call("GET", f"/v1/renders/{job}/progress", mine)
                if p["step"] != "Rendering" or p["current_frame"] is None:
                    return False
            return True

        await wait("every job rendering", all_rendering, 120)
        run = Run(jobs, [Watcher(jobs[i % len(jobs)]) for i in range(args.watchers)])

        progress(f"baseline: {args.baseline:.0f} s of frame reports, no watchers")
        run.baseline = h.CpuMeter(daemon, env.pg).start()
        t0 = time.time()
        await trio.sleep(args.baseline)
        run.baseline.stop()
        run.baseline_window = (t0, time.time())

        progress(f"connecting {args.watchers} watchers")
        ws_base = f"ws://127.0.0.1:{env.port}/ws/v1/render"
        connected = trio.Semaphore(0)
        all_closed = trio.Event()
        open_count = [len(run.watchers)]

        def one_closed() -> None:
            open_count[0] -= 1
            if open_count[0] == 0:
                all_closed.set()

        gate = trio.Semaphore(50)
        started = time.monotonic()
        async with trio.open_nursery() as nursery:
            for w in run.watchers:
                url = f"{ws_base}/{w.job}?access_token={user_token}"
                nursery.start_soon(watch, w, url, gate, connected, one_closed)
            for _ in run.watchers:
                await connected.acquire()
            run.connect_sec = time.monotonic() - started
            progress(f"measuring {args.window:.0f} s")
            run.measured = h.CpuMeter(daemon, env.pg).start()
            run.machine = Machine(agent_pids).start()
            t0 = time.time()
            await trio.sleep(args.window)
            run.measured.stop()
            run.machine.stop()
            run.window = (t0, time.time())
            progress("cancelling every job: each watcher gets Cancelled, then 1000")
            for job in jobs:
                await call("POST", f"/v1/renders/{job}/cancel", mine, {})
                run.cancelled_at[job] = time.time()
            with trio.move_on_after(60):
                await all_closed.wait()
            nursery.cancel_scope.cancel()
    return run


async def _at_least(count: Any, n: int) -> bool:
    return bool(await count() >= n)


async def _equals(get: Any, arg: Any, value: str) -> bool:
    return bool(await get(arg) == value)


async def watch(
    w: Watcher,
    url: str,
    gate: trio.Semaphore,
    connected: trio.Semaphore,
    on_close: Callable[[], None],
) -> None:
    """One watcher: its snapshot (under ``gate``: handshakes a few at a time), then every
    message with its arrival time, until the server closes."""
    await gate.acquire()
    waiting = True
    try:
        async with open_websocket_url(url) as ws:
            w.received.append(_entry(await ws.get_message()))
            gate.release()
            waiting = False
            connected.release()
            while True:
                try:
                    text = await ws.get_message()
                except ConnectionClosed as e:
                    w.close_code = None if e.reason is None else e.reason.code
                    w.closed_at = time.time()
                    on_close()
                    return
                w.received.append(_entry(text))
    finally:
        if waiting:
            gate.release()


def _entry(text: str | bytes) -> tuple[float, int | None, str]:
    p = json.loads(text)
    return time.time(), p["current_frame"], p["step"]


# ------------------------------------------------------------------ the figures


REPORTS = """
SELECT f.job_id, r.frame_number, extract(epoch FROM r.completed_at) AS completed,
       extract(epoch FROM r.received_at) AS received
FROM frame_reports r JOIN frame_jobs f ON f.id = r.frame_job_id
WHERE f.job_id = ANY($1::uuid[])
"""


async def fetch_reports(db_url: str, jobs: list[UUID]) -> list[Any]:
    conn = await asyncpg.connect(db_url)
    try:
        return list(await conn.fetch(REPORTS, jobs))
    finally:
        await conn.close()


def latencies(run: Run, reports: list[Any]) -> tuple[list[float], list[float]]:
    """(from completed_at, from received_at) per (report in the window, watcher of its job)."""
    by_job: dict[UUID, list[Any]] = defaultdict(list)
    start, end = run.window
    for r in reports:
        if r["completed"] is not None and start <= float(r["completed"]) <= end - 1.0:
            by_job[r["job_id"]].append(r)
    from_sent: list[float] = []
    from_received: list[float] = []
    for w in run.watchers:
        seen = [(t, f) for t, f, _ in w.received if f is not None]
        times = [t for t, _ in seen]
        # current_frame only grows for a one-range job: the first message at or past a frame.
        best = [f for _, f in seen]
        running = -1
        for i, f in enumerate(best):
            running = max(running, f)
            best[i] = running
        for r in by_job.get(w.job, ()):
            i = bisect.bisect_left(best, r["frame_number"])
            if i == len(best):
                continue  # this watcher ended before it could see it
            from_sent.append(times[i] - float(r["completed"]))
            from_received.append(times[i] - float(r["received"]))
    return from_sent, from_received


def report(args: argparse.Namespace, run: Run, reports: list[Any]) -> None:
    assert run.measured is not None and run.baseline is not None
    start, end = run.window
    span = end - start
    delivered = sum(1 for w in run.watchers for t, _, _ in w.received if start <= t <= end)
    b0, b1 = run.baseline_window
    base_reports = sum(1 for r in reports if b0 <= float(r["received"]) <= b1)
    window_reports = sum(1 for r in reports if start <= float(r["received"]) <= end)
    busiest = 0
    for w in run.watchers:
        times = [t for t, _, _ in w.received if start <= t <= end]
        for i in range(len(times)):
            busiest = max(busiest, bisect.bisect_left(times, times[i] + 1.0) - i)
    sent, received = latencies(run, reports)
    # The daemon's CPU per frame report (and the heartbeats around it), without watchers; the
    # report rate changes once watchers load the machine, so scale by reports, not by time.
    per_report = run.baseline.daemon_sec / max(base_reports, 1)
    extra = run.measured.daemon_sec - per_report * window_reports
    finals = sum(
        1
        for w in run.watchers
        if w.close_code == 1000 and w.received and w.received[-1][2] == "Cancelled"
    )
    dropped = sum(1 for w in run.watchers if w.close_code == 1013)
    close_times = [
        w.closed_at - run.cancelled_at[w.job]
        for w in run.watchers
        if w.closed_at is not None and w.job in run.cancelled_at
    ]

    print()
    print(
        f"bench.ws_fanout: {args.watchers} watchers over {args.jobs} jobs, frame time "
        f"{args.frame_time}s, window {span:.1f}s (2 shared cores: figures are noisy)"
    )
    print(f"  watchers connected (snapshot received) in   {run.connect_sec:.1f} s")
    print(
        f"  frame reports/s       baseline {base_reports / max(b1 - b0, 1e-9):7.0f}   "
        f"measured {window_reports / span:7.0f}"
    )
    print(f"  delivered messages/s  {delivered / span:9.0f}   ({delivered} in the window)")
    print(f"  busiest watcher       {busiest} messages in a second (design: at most 10)")
    print(
        f"  latency frame report -> watcher, from the node's send (completed_at): "
        f"p50 {percentile(sent, 50) * 1000:.0f} ms  p99 {percentile(sent, 99) * 1000:.0f} ms  "
        f"max {max(sent, default=math.nan) * 1000:.0f} ms  (n={len(sent)})"
    )
    print(
        f"  latency from the report's commit (received_at):                     "
        f"p50 {percentile(received, 50) * 1000:.0f} ms  "
        f"p99 {percentile(received, 99) * 1000:.0f} ms"
    )
    print(
        f"  daemon CPU            baseline {run.baseline.pct(run.baseline.daemon_sec):5.1f} %   "
        f"measured {run.measured.pct(run.measured.daemon_sec):5.1f} % of one core   "
        f"(PostgreSQL {run.measured.pct(run.measured.postgres_sec):.1f} %, "
        f"watchers {run.measured.pct(run.measured.self_sec):.1f} %)"
    )
    if delivered:
        print(
            "  daemon CPU per delivered message: "
            f"{run.measured.daemon_sec / delivered * 1e6:.0f} µs "
            f"total, {max(extra, 0.0) / delivered * 1e6:.0f} µs for the fan-out (the CPU beyond "
            f"{per_report * 1e3:.1f} ms per frame report, the no-watcher baseline)"
        )
    if run.machine is not None:
        print(
            f"  the machine           {run.machine.busy_cores:.2f} of {os.cpu_count()} cores busy "
            f"(agents {run.machine.agents_cores:.2f})"
        )
    print(f"  dropped (1013)        {dropped}")
    print(
        f"  after cancel: {finals}/{len(run.watchers)} got Cancelled then 1000, "
        f"p99 {percentile(close_times, 99) * 1000:.0f} ms after their job's cancel answered"
    )
    for name, values in (("the report's commit", received), ("the node's send", sent)):
        p99 = percentile(values, 99)
        verdict = "PASS" if p99 < TARGET_P99_SEC else "FAIL"
        print(
            f"{verdict}: p99 from {name} to the watchers {p99 * 1000:.0f} ms "
            f"(target < {TARGET_P99_SEC * 1000:.0f} ms)"
        )
    print(
        "  (a report's arrival lies between the two: the node's send also counts the report's "
        "own HTTP request and its wait for the job actor, before the commit begins)"
    )


# ------------------------------------------------------------------ main


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    agents: list[farm.Agent] = []
    try:
        progress("starting PostgreSQL and S3")
        with h.environment(keep=args.keep) as env:
            frames = frames_needed(args)
            config = farm.write_config(
                env,
                "ws_fanout",
                {
                    "nodes": {"heartbeat_interval_sec": 5, "busy_heartbeat_interval_sec": 5},
                    "jobs": {
                        "min_chunk_frames": frames,
                        "max_chunk_frames": frames,
                        "trim_min_tail_frames": 10 * frames,
                    },
                },
            )
            daemon = h.DaemonProcess(config, env.root / "daemon.log", env.port)
            daemon.start()
            try:
                token = farm.secrets_of(env).service_token
                per = math.ceil(args.jobs / args.agents)
                for i in range(args.agents):
                    n = min(per, args.jobs - i * per)
                    if n > 0:
                        agent = farm.Agent(
                            env.root, env.port, token, f"ws{i}", n, frame_time=args.frame_time
                        )
                        agents.append(agent.start())
                pids = [a.proc.pid for a in agents if a.proc is not None]
                run = trio.run(measure, args, env, daemon, pids)
                reports = asyncio.run(fetch_reports(env.db_url, run.jobs))
            finally:
                for agent in agents:
                    agent.kill()
                daemon.stop()
            report(args, run, reports)
            if args.keep:
                print(f"  logs kept in {env.root}")
    except KeyboardInterrupt:
        return 130
    except (h.HarnessError, OSError) as e:
        print(f"bench.ws_fanout: harness failed: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
