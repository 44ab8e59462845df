"""Shutdown benchmark (issue 11): SIGTERM -> exit with nodes heartbeating and jobs rendering.

One ``flatrender serve`` subprocess, ``--nodes`` protocol-only nodes (``bench.pipeline``'s
working fleet: signed heartbeats over keep-alive connections, reporting the job of the range
they were given as in hand) and ``--jobs`` jobs of 50 frames (5 ranges of 10). Once the ranges
are handed out, the nodes keep heartbeating as told and the daemon gets SIGTERM. Prints the time
from SIGTERM to exit, the exit code, and whether anything was requeued or declared Offline on
the way out (DESIGN §8: nothing is). Target: exit 0 in under 2 s with 1,000 nodes and 200 jobs,
``[http] grace_sec`` 10 (idle keep-alive connections must not be waited out).

``python -m bench.shutdown`` (1,000 nodes, 200 jobs), ``--quick`` (200 nodes, 40 jobs).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
import time
from uuid import UUID

from bench import _farm as farm
from bench import _harness as h
from bench import _loadgen as lg
from bench.heartbeats import SimFleet
from bench.pipeline import (
    HOST,
    RESTART_FRAMES,
    Farm,
    WorkingFleet,
    assigned_count,
    progress,
    setup_catalog,
    timed_start,
)

GRACE_SEC = 10.0
TARGET_SEC = 2.0


async def hand_out(f: Farm, fleet: WorkingFleet, jobs: list[UUID], ranges: int) -> int:
    """Every node heartbeats once, then as told, until the ranges are handed out (or 120 s)."""
    fleet.reboot()
    await lg.closed_loop(
        "first contact",
        HOST,
        f.env.port,
        50,
        fleet.once_each(list(range(len(fleet.nodes)))),
        duration=None,
        on_answer=fleet.on_answer,
    )
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        done = await assigned_count(f, jobs, 1)
        if done >= ranges:
            return done
        await keep_alive(f, fleet, 5.0)
    return await assigned_count(f, jobs, 1)


async def keep_alive(f: Farm, fleet: WorkingFleet, seconds: float) -> lg.PhaseResult:
    return await lg.open_loop(
        "keep alive",
        HOST,
        f.env.port,
        50,
        fleet.open_loop_nodes(),
        [0.9 * due for due in fleet.staggered_first_due(5.0)],
        duration=seconds,
        warmup=0.0,
        grace=1.0,
    )


async def sigterm(daemon: h.DaemonProcess) -> tuple[float, int]:
    """SIGTERM after 2 s of steady heartbeats; (seconds to exit, exit code)."""
    await asyncio.sleep(2.0)
    assert daemon.proc is not None
    proc = daemon.proc
    began = time.monotonic()
    proc.terminate()
    code = await asyncio.to_thread(proc.wait, 60)
    return time.monotonic() - began, code


async def run(args: argparse.Namespace, env: h.Environment) -> int:
    secrets = farm.secrets_of(env)
    api = farm.Api(env.port, secrets, farm.new_ids(1)[0])
    db = await farm.Db.connect(env.db_url)
    f = Farm(args, env, secrets, api, db, pipeline_projects=[], restart_projects=farm.new_ids(4))
    try:
        progress(f"registering {args.nodes} nodes in bulk")
        ids = await h.register_nodes(env.db_url, args.nodes)
        config = farm.write_config(
            env,
            "shutdown",
            {
                "http": {"grace_sec": GRACE_SEC},
                "nodes": {"heartbeat_interval_sec": 5, "busy_heartbeat_interval_sec": 5,
                          "heartbeat_timeout_sec": 15},
                "jobs": {"min_chunk_frames": 10, "max_chunk_frames": 10},
            },
        )  # fmt: skip
        daemon = f.daemon(config, "shutdown")
        ready, _ = timed_start(daemon, env.port)
        progress(f"daemon ready in {ready:.1f}s")
        await setup_catalog(f)
        await db.conn.execute(
            "INSERT INTO replicas (saved_project_id, project_version, storage_key) "
            "SELECT saved_project_id, version, 'replicas/' || saved_project_id || '/' || version "
            "|| '.aep' FROM catalog_projects WHERE saved_project_id = ANY($1::uuid[]) "
            "ON CONFLICT DO NOTHING",
            f.restart_projects,
        )
        progress(f"submitting {args.jobs} jobs of {RESTART_FRAMES} frames")
        projects = [f.restart_projects[i % 4] for i in range(args.jobs)]
        jobs = await api.submit_many(projects)
        ranges = min(args.jobs * (RESTART_FRAMES // 10), args.nodes)
        fleet = WorkingFleet(SimFleet.create(ids, env.node_master_key, env.port).nodes)
        progress(f"{args.nodes} nodes come up and take {ranges} ranges")
        assigned = await hand_out(f, fleet, jobs, ranges)
        progress(f"{assigned} ranges in hand; heartbeating, then SIGTERM")
        load = asyncio.create_task(keep_alive(f, fleet, 60.0))
        # Once the daemon is gone the nodes' reconnections are refused: expected, not news.
        asyncio.get_running_loop().set_exception_handler(lambda loop, context: None)
        try:
            took, code = await sigterm(daemon)
        finally:
            # The nodes stop with the daemon: their next connections would only be refused.
            load.cancel()
            with contextlib.suppress(BaseException):
                await load
            daemon.stop()
        requeued = await db.conn.fetchval(
            "SELECT count(*) FROM frame_jobs WHERE job_id = ANY($1::uuid[]) AND attempt > 1",
            jobs,
        )
        offline = await db.conn.fetchval("SELECT count(*) FROM nodes WHERE status = 'Offline'")
        rendering = await db.conn.fetchval(
            "SELECT count(*) FROM frame_jobs WHERE job_id = ANY($1::uuid[]) "
            "AND status IN ('Assigned', 'Rendering')",
            jobs,
        )
        log = daemon.log_path.read_text(errors="replace")
        lost = log.count("lost its work")
    finally:
        await api.close()
        await db.close()
    ok = code == 0 and took < TARGET_SEC and requeued == 0 and lost == 0
    print(f"-- shutdown: {args.nodes} nodes heartbeating, {args.jobs} jobs, grace_sec {GRACE_SEC}")
    print(f"ranges held by nodes at SIGTERM   : {assigned} (still held after exit: {rendering})")
    print(f"SIGTERM -> exit                   : {took:.2f} s, exit code {code}")
    print(f"ranges requeued (attempt > 1)     : {requeued}")
    print(f"'lost its work' in the daemon log : {lost}")
    print(f"nodes Offline after exit          : {offline}")
    print(f"target exit 0 in < {TARGET_SEC:.0f} s, nothing requeued: {'PASS' if ok else 'FAIL'}")
    return 0 if ok else 1


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m bench.shutdown",
        description="SIGTERM -> exit with nodes heartbeating and jobs rendering (issue 11).",
    )
    p.add_argument("--nodes", type=int, help="simulated nodes (1000; quick 200)")
    p.add_argument("--jobs", type=int, help="jobs of 5 ranges (200; quick 40)")
    p.add_argument("--quick", action="store_true", help="200 nodes, 40 jobs")
    p.add_argument("--keep", action="store_true", help="keep the run's directory")
    args = p.parse_args(argv)
    args.nodes = args.nodes or (200 if args.quick else 1000)
    args.jobs = args.jobs or (40 if args.quick else 200)
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    with h.environment(keep=args.keep) as env:
        return asyncio.run(run(args, env))


if __name__ == "__main__":
    sys.exit(main())
