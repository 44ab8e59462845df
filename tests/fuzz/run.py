"""Fuzz the running API with schemathesis: ``python -m tests.fuzz.run [--max-examples N] ...``.

Starts ``flatrender dev --nodes 0`` (the real daemon, embedded PostgreSQL and S3) in a scratch
folder, registers a node and submits a render, then runs schemathesis against the served
``/v1/openapi.json`` once per caller, all at once (the daemon sees concurrent callers):

- ``user``, ``admin``, ``service``: every operation but ``/internal/*``, with a user JWT, an
  admin JWT and a service token;
- ``node``: only ``/internal/*``, each request signed for the registered node by the request
  hook in ``tests/fuzz/hooks.py``.

Checks: no 5xx, status code, content type and body as documented, and no request slower than
``--request-timeout`` (a timeout is a schemathesis network error). A fixed seed makes a run
repeatable. Prints cases run and findings per caller and class; exit status 1 on any finding.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any
from uuid import UUID

import httpx

from flatrender.devmode import demo_projects

ROOT = Path(__file__).resolve().parents[2]
CHECKS = ",".join(
    [
        "not_a_server_error",
        "status_code_conformance",
        "content_type_conformance",
        "response_schema_conformance",
    ]
)
CALLERS = ("user", "admin", "service", "node")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--max-examples", type=int, default=25, help="cases per operation")
    parser.add_argument("--seed", type=int, default=20261206)
    parser.add_argument("--request-timeout", type=float, default=10.0)
    parser.add_argument("--callers", default=",".join(CALLERS))
    parser.add_argument("--sequential", action="store_true", help="one caller at a time")
    parser.add_argument("--keep", type=Path, help="work in this folder and keep it")
    args = parser.parse_args(argv)
    callers = [c for c in args.callers.split(",") if c]
    if args.keep:
        args.keep.mkdir(parents=True, exist_ok=True)
        return fuzz(args.keep, args, callers)
    with tempfile.TemporaryDirectory(prefix="flatrender-fuzz-") as scratch:
        return fuzz(Path(scratch), args, callers)


def fuzz(work: Path, args: argparse.Namespace, callers: list[str]) -> int:
    started = time.monotonic()
    port = _free_port()
    log = (work / "daemon.log").open("ab")
    daemon = subprocess.Popen(
        [sys.executable, "-m", "flatrender.cli", "dev", "--state-dir", str(work / "state")]
        + ["--port", str(port), "--nodes", "0"],
        stdout=log,
        stderr=subprocess.STDOUT,
        cwd=ROOT,
    )
    try:
        dev = _wait_ready(work / "state" / "dev.json", port, daemon)
        base = f"http://127.0.0.1:{port}"
        node_id, secret, job_id = _seed(base, dev)
        runs, codes = {}, {}
        for who in callers:
            runs[who] = _start(who, work, base, dev, args, node_id, secret, job_id)
            if args.sequential:
                codes[who] = runs[who].wait()
        codes |= {who: proc.wait() for who, proc in runs.items()}
        ok = _summarise(work, runs, codes, time.monotonic() - started)
        if daemon.poll() is not None:
            print(f"the daemon died (exit {daemon.returncode}); see {work / 'daemon.log'}")
            ok = False
        return 0 if ok else 1
    finally:
        if daemon.poll() is None:
            daemon.send_signal(signal.SIGINT)
            try:
                daemon.wait(30)
            except subprocess.TimeoutExpired:
                daemon.kill()
                daemon.wait()
        log.close()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_ready(dev_json: Path, port: int, daemon: subprocess.Popen[bytes]) -> dict[str, Any]:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if daemon.poll() is not None:
            raise SystemExit(f"flatrender dev exited with {daemon.returncode}")
        if dev_json.exists():
            try:
                if httpx.get(f"http://127.0.0.1:{port}/livez", timeout=2).status_code == 200:
                    return json.loads(dev_json.read_text())  # type: ignore[no-any-return]
            except httpx.HTTPError:
                pass
        time.sleep(0.2)
    raise SystemExit("flatrender dev did not get ready within 120 s")


def _seed(base: str, dev: dict[str, Any]) -> tuple[str, str, str]:
    """A registered node (its secret signs the node run) and a queued render of the user's."""
    with httpx.Client(base_url=base, timeout=30) as http:
        admin = {"Authorization": f"Bearer {dev['admin_token']}"}
        node = http.post(
            "/v1/nodes",
            headers=admin,
            json={
                "name": "fuzz-node",
                "region": "eu",
                "node_ip": "127.0.0.1",
                "worker_port": 9000,
                "current_ae_version": "2024",
            },
        )
        node.raise_for_status()
        project_id, _ = demo_projects(UUID(dev["user_id"]))[0]
        job = http.post(
            "/v1/renders",
            headers={"Authorization": f"Bearer {dev['user_token']}"},
            json={"saved_project_id": str(project_id), "quality": "Low", "resolution": "HD"},
        )
        job.raise_for_status()
        return node.json()["id"], node.json()["node_secret"], job.json()["id"]


def _start(
    who: str,
    work: Path,
    base: str,
    dev: dict[str, Any],
    args: argparse.Namespace,
    node_id: str,
    secret: str,
    job_id: str,
) -> subprocess.Popen[bytes]:
    argv = [str(Path(sys.executable).with_name("schemathesis")), "run"]
    argv += [f"{base}/v1/openapi.json", "--checks", CHECKS, "--no-color"]
    argv += ["--max-examples", str(args.max_examples), "--seed", str(args.seed)]
    argv += ["--request-timeout", str(args.request_timeout), "--workers", "1"]
    argv += ["--report", "json", "--report-json-path", str(work / f"{who}.json")]
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    if who == "node":
        argv += ["--include-path-regex", "/internal/"]
        env |= {
            "SCHEMATHESIS_HOOKS": "tests.fuzz.hooks",
            "FUZZ_NODE_ID": node_id,
            "FUZZ_NODE_SECRET": secret,
            "FUZZ_JOB_ID": job_id,
        }
    else:
        token = {"user": "user_token", "admin": "admin_token", "service": "service_token"}[who]
        argv += ["--exclude-path-regex", "/internal/", "-H", f"Authorization: Bearer {dev[token]}"]
    out = (work / f"{who}.log").open("wb")
    # In the scratch folder: schemathesis keeps a cache (.schemathesis/) where it runs.
    return subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, cwd=work, env=env)


def _summarise(work: Path, runs: dict[str, Any], codes: dict[str, int], elapsed: float) -> bool:
    ok = True
    total = 0
    classes: collections.Counter[str] = collections.Counter()
    details: list[str] = []
    print(f"schemathesis against flatrender dev, {elapsed:.0f} s")
    for who in runs:
        path = work / f"{who}.json"
        if not path.exists():
            print(f"  {who:8} no report (exit {codes[who]}):")
            print((work / f"{who}.log").read_text()[-3000:])
            ok = False
            continue
        report = json.loads(path.read_text())
        cases = report["test_cases"]
        total += cases["generated"]
        found = _findings(report)
        classes.update(found)
        line = f"  {who:8} {cases['generated']:5} cases, {cases['with_failures']} failing,"
        print(f"{line} {cases['errored']} errored (exit {codes[who]})")
        for name, count in sorted(found.items()):
            print(f"      {count:4} × {name}")
        if codes[who] != 0 or found:
            ok = False
            details.append(f"--- {who}\n" + _failure_details(work / f"{who}.log"))
    print(f"  total    {total:5} cases; findings by class: {dict(classes) or 'none'}")
    print("\n".join(details))
    return ok


def _findings(report: dict[str, Any]) -> collections.Counter[str]:
    found: collections.Counter[str] = collections.Counter()
    for failure in report.get("failures", []):
        title = failure.get("title") or failure.get("check") or json.dumps(failure)[:120]
        found[str(title)] += int(failure.get("count", 1))
    for error in report.get("errors", []):
        found[f"error: {error.get('title')}"] += int(error.get("count", 1))
    return found


def _failure_details(log: Path) -> str:
    """The FAILURES and ERRORS sections of a run's output (where schemathesis explains)."""
    text = log.read_text(errors="replace")
    start = min(
        (i for i in (text.find("= FAILURES ="), text.find("= ERRORS =")) if i >= 0), default=-1
    )
    end = text.find("= SUMMARY =")
    if start < 0:
        return text[-4000:]
    return text[start:end][:20000]


if __name__ == "__main__":
    raise SystemExit(main())
