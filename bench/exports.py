"""Exports benchmark (issue 5): download-url latency against a real daemon, and the Reaper's
deletion rate for expired exports.

Run::

    .venv/bin/python -m bench.exports                 # 2,000 url requests, 10,000 expired exports
    .venv/bin/python -m bench.exports --quick         # 300 requests, 1,000 exports: a sanity check
    .venv/bin/python -m bench.exports --help

Everything is real: embedded PostgreSQL and S3, ``flatrender serve`` as a subprocess. Phases:

1. download-url: one export (video and thumbnail objects in S3, rows in PostgreSQL) owned by a
   user; ``--requests`` ``GET /v1/exports/{id}/download-url`` with the user's JWT, one after
   the other on one keep-alive connection (latency p50/p99), then the same number spread over
   ``--connections`` concurrent connections (throughput and latency under load); then the same
   on ``GET /livez`` (no database, no auth) as the reference for the HTTP stack and this
   client. One of the urls is downloaded to check it gives the exact bytes.
2. reaper: the daemon is stopped; ``--exports`` exports, already due, with two objects each, are
   stored (rows in one transaction, objects through the minio client); then the Reaper's own
   task (``retention.reap_due_exports``, batches of ``[exports] reap_batch_size``) deletes them
   in this process: exports/s and objects/s, and a check that no row and no object is left.

Figures on a shared 2-core machine are noisy (±25-40 %): compare figures from one run only.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from datetime import UTC, datetime, timedelta
from uuid import UUID, uuid4

import httpx
import trio
import trio_asyncio

from bench import _harness as h
from flatrender.actors import retention
from flatrender.config import Config
from flatrender.http.auth import mint_token
from flatrender.persistence import exports
from flatrender.persistence.db import open_database
from flatrender.storage import MinioStore, ObjectStore

VIDEO = bytes(range(256)) * 64  # 16 KiB
THUMBNAIL = b"\x89PNG\r\n\x1a\n" + bytes(1000)


def progress(message: str) -> None:
    print(f"[bench.exports] {message}", file=sys.stderr, flush=True)


def export_rows(owner: UUID, due: datetime) -> tuple[exports.ExportRow, list[exports.ExportFile]]:
    export_id = uuid4()
    video, thumb = f"exports/{export_id}/video.mp4", f"exports/{export_id}/thumbnail.png"
    row = exports.ExportRow(
        id=export_id, user_id=owner, job_id=None, saved_project_id=uuid4(), path=video,
        image=thumb, size_bytes=len(VIDEO), duration_sec=2.0, width=64, height=36,
        file_extension="mp4", file_type="video/mp4", render_quality="Medium",
        create_type="Cash", produce_date=due - timedelta(days=30), auto_delete_date=due,
    )  # fmt: skip
    files = [
        exports.ExportFile(uuid4(), export_id, video, thumb, len(VIDEO), "mp4"),
        exports.ExportFile(uuid4(), export_id, thumb, thumb, len(THUMBNAIL), "png"),
    ]
    return row, files


async def store_exports(
    config: Config, count: int, owner: UUID, due: datetime, concurrency: int = 16
) -> tuple[list[exports.ExportRow], float]:
    """``count`` exports with their objects; returns them and the seconds it took."""
    store = MinioStore(config.s3)
    made = [export_rows(owner, due) for _ in range(count)]
    started = time.perf_counter()
    async with trio_asyncio.open_loop(), open_database(config.database.url, 1, 4) as db:
        for i in range(0, count, 1000):
            chunk = made[i : i + 1000]
            await exports.insert(db, [r for r, _ in chunk], [f for _, fs in chunk for f in fs])
    slots = trio.Semaphore(concurrency)

    async def put(row: exports.ExportRow) -> None:
        async with slots:
            await store.put_bytes(row.path, VIDEO, "video/mp4")
            await store.put_bytes(row.image, THUMBNAIL, "image/png")

    async with trio.open_nursery() as nursery:
        for row, _ in made:
            nursery.start_soon(put, row)
    return [r for r, _ in made], time.perf_counter() - started


# ------------------------------------------------------------------ phase 1: download-url


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


def latency_line(name: str, samples: list[float], seconds: float) -> str:
    ms = [s * 1000 for s in samples]
    return (
        f"{name:<28} n={len(ms):>5}  p50 {percentile(ms, 50):7.2f} ms  "
        f"p99 {percentile(ms, 99):7.2f} ms  max {max(ms):7.2f} ms  "
        f"mean {statistics.fmean(ms):6.2f} ms  {len(ms) / seconds:7.1f} req/s"
    )


async def sequential(client: httpx.AsyncClient, path: str, n: int) -> tuple[list[float], float]:
    samples: list[float] = []
    started = time.perf_counter()
    for _ in range(n):
        t = time.perf_counter()
        response = await client.get(path)
        samples.append(time.perf_counter() - t)
        response.raise_for_status()
    return samples, time.perf_counter() - started


async def concurrent(
    client: httpx.AsyncClient, path: str, n: int, connections: int
) -> tuple[list[float], float]:
    samples: list[float] = []
    left = iter(range(n))

    async def worker() -> None:
        for _ in left:
            t = time.perf_counter()
            response = await client.get(path)
            samples.append(time.perf_counter() - t)
            response.raise_for_status()

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(connections)))
    return samples, time.perf_counter() - started


async def download_url_phase(
    args: argparse.Namespace, env: h.Environment, config: Config, row: exports.ExportRow
) -> None:
    owner = row.user_id
    token = mint_token(config.auth.jwt_secret, owner)
    base = f"http://127.0.0.1:{env.port}"
    path = f"/v1/exports/{row.id}/download-url"
    limits = httpx.Limits(max_connections=args.connections)
    async with httpx.AsyncClient(
        base_url=base, headers={"Authorization": f"Bearer {token}"}, limits=limits, timeout=30
    ) as client:
        answer = (await client.get(path)).json()
        body = (await client.get(answer["url"])).content
        if body != VIDEO:
            raise h.HarnessError("the presigned url did not give the export's bytes")
        await sequential(client, path, min(50, args.requests))  # warm-up
        seq, seq_s = await sequential(client, path, args.requests)
        con, con_s = await concurrent(client, path, args.requests, args.connections)
        # The same client on a trivial endpoint of the same app: the HTTP stack and client's own
        # share of the figures above.
        live, live_s = await sequential(client, "/livez", args.requests)
        live_con, live_con_s = await concurrent(client, "/livez", args.requests, args.connections)
    print(latency_line("download-url, 1 connection", seq, seq_s))
    print(latency_line(f"download-url, {args.connections} connections", con, con_s))
    print(latency_line("/livez, 1 connection", live, live_s))
    print(latency_line(f"/livez, {args.connections} connections", live_con, live_con_s))
    print("presigned url downloads the exact bytes: yes")


# ------------------------------------------------------------------ phase 2: the Reaper


async def reaper_phase(args: argparse.Namespace, config: Config) -> None:
    now = datetime.now(UTC)
    due = now - timedelta(days=1)  # the download-url phase's export is due in 30 days: it stays
    progress(f"storing {args.exports} expired exports ({2 * args.exports} objects)")
    owner = uuid4()
    rows, setup_s = await store_exports(config, args.exports, owner, due)
    progress(f"stored in {setup_s:.1f} s; reaping")
    store: ObjectStore = MinioStore(config.s3)
    batch = config.exports.reap_batch_size
    async with trio_asyncio.open_loop(), open_database(config.database.url, 1, 4) as db:
        started = time.perf_counter()
        removed = await retention.reap_due_exports(db, store, now, batch)
        seconds = time.perf_counter() - started
        left_rows = int(await db.fetchval("SELECT count(*) FROM exports WHERE user_id = $1", owner))
    reaped = {str(r.id) for r in rows}
    listed = await store.list_prefix("exports/")
    left_objects = sum(1 for o in listed if o.key.split("/")[1] in reaped)
    print(
        f"reaper: {removed} exports ({2 * removed} objects) in {seconds:.1f} s, batch {batch}: "
        f"{removed / seconds:.0f} exports/s, {2 * removed / seconds:.0f} objects/s "
        f"(setup: {args.exports} exports stored in {setup_s:.1f} s)"
    )
    print(f"left after reaping: {left_rows} rows, {left_objects} objects (expected 0 and 0)")
    if removed != len(rows) or left_rows or left_objects:
        raise h.HarnessError("the Reaper left exports behind")


# ------------------------------------------------------------------ main


def run(args: argparse.Namespace) -> None:
    with h.environment(keep=args.keep, log_level="WARNING") as env:
        config = Config.load(env.config_path, env={})
        daemon = h.DaemonProcess(env.config_path, env.log_path, env.port)
        progress(f"daemon ready in {daemon.start():.1f} s")
        try:
            later = datetime.now(UTC) + timedelta(days=30)
            [row], _ = trio.run(store_exports, config, 1, uuid4(), later)
            asyncio.run(download_url_phase(args, env, config, row))
        finally:
            daemon.stop()
        trio.run(reaper_phase, args, config)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.exports", description=__doc__.split("\n")[0])
    p.add_argument("--requests", type=int, default=None, help="download-url requests (2000)")
    p.add_argument("--connections", type=int, default=16, help="for the concurrent phase (16)")
    p.add_argument("--exports", type=int, default=None, help="expired exports to reap (10000)")
    p.add_argument("--quick", action="store_true", help="300 requests, 1,000 exports")
    p.add_argument("--keep", action="store_true", help="keep the temporary folder (logs)")
    args = p.parse_args(argv)
    args.requests = args.requests or (300 if args.quick else 2000)
    args.exports = args.exports or (1000 if args.quick else 10_000)
    if args.requests < 1 or args.exports < 1 or args.connections < 1:
        p.error("--requests, --exports and --connections must be positive")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        run(args)
    except KeyboardInterrupt:
        progress("interrupted; everything was stopped")
        return 130
    except (h.HarnessError, OSError) as e:
        print(f"bench.exports: failed: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
