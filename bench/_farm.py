"""A render farm for the benchmarks: configuration variants, the REST calls a main app makes,
simulated agents as subprocesses, and what their logs say about when things reached the nodes.

Builds on :mod:`bench._harness` (embedded PostgreSQL and S3, ``flatrender serve`` as a
subprocess). Everything here is plain asyncio (httpx, asyncpg), like :mod:`bench._loadgen`.

- :func:`write_config`: the harness's configuration with some keys changed, as a new file, so
  each phase of a benchmark can run its own daemon (heartbeat intervals, chunk sizes, ...).
- :class:`Api`: catalog PUT and billing credit with the service token, node registration, and
  submit / cancel with a user JWT minted like ``flatrender token`` does.
- :class:`Agent`: ``flatrender agent`` (N simulated nodes) in a subprocess logging to a file.
- :func:`agent_events`: the agent's log as timed events: a command received (the heartbeat
  answer that carried it), a range done, an AE crash reported and its answer.
"""

from __future__ import annotations

import asyncio
import json
import re
import signal
import subprocess
import time
import tomllib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any
from uuid import UUID, uuid4

import asyncpg
import httpx

from bench import _harness as h
from flatrender.http.auth import mint_token

TERMINAL = ("Completed", "Failed", "Cancelled")


# ------------------------------------------------------------------ configuration


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)  # a TOML basic string for the text we write
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    raise TypeError(f"cannot write {value!r} as TOML")


def dump_toml(data: Mapping[str, Mapping[str, Any]]) -> str:
    lines: list[str] = []
    for section, values in data.items():
        lines.append(f"[{section}]")
        lines += [f"{key} = {_toml_value(value)}" for key, value in values.items()]
    return "\n".join(lines) + "\n"


def write_config(env: h.Environment, name: str, changes: Mapping[str, Mapping[str, Any]]) -> Path:
    """The harness's configuration with ``changes`` ({section: {key: value}}) as ``name``.toml."""
    data: dict[str, dict[str, Any]] = tomllib.loads(env.config_path.read_text())
    for section, values in changes.items():
        data.setdefault(section, {}).update(values)
    path = env.root / f"{name}.toml"
    path.write_text(dump_toml(data))
    return path


@dataclass(frozen=True)
class Secrets:
    jwt_secret: str
    service_token: str


def secrets_of(env: h.Environment) -> Secrets:
    auth = tomllib.loads(env.config_path.read_text())["auth"]
    return Secrets(auth["jwt_secret"], auth["service_tokens"][0])


# ------------------------------------------------------------------ REST as the main app


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


class ApiError(RuntimeError):
    pass


class Api:
    """The calls a main app (service token) and a user (JWT) make; raises ApiError on a refusal."""

    def __init__(self, port: int, secrets: Secrets, user_id: UUID) -> None:
        self.base = f"http://127.0.0.1:{port}"
        self.service = secrets.service_token
        self.user_id = user_id
        self.user_token = mint_token(secrets.jwt_secret, user_id, ttl_sec=6 * 3600)
        self.http = httpx.AsyncClient(
            base_url=self.base,
            timeout=30.0,
            limits=httpx.Limits(max_connections=32, max_keepalive_connections=32),
        )

    async def close(self) -> None:
        await self.http.aclose()

    async def _call(self, method: str, path: str, token: str, body: Any = None) -> Any:
        for attempt in range(20):
            try:
                r = await self.http.request(method, path, json=body, headers=bearer(token))
            except httpx.TransportError as e:
                problem = f"{type(e).__name__}: {e}"
            else:
                if r.status_code < 300:
                    return r.json() if r.content else None
                if r.status_code != 503:
                    raise ApiError(f"{method} {path}: HTTP {r.status_code} {r.text[:300]}")
                problem = f"HTTP 503 {r.text[:200]}"
            await asyncio.sleep(min(2.0, 0.1 * 2**attempt))
        raise ApiError(f"{method} {path}: gave up ({problem})")

    async def put_project(self, project_id: UUID, frames: int, ae_version: str = "2024") -> None:
        spec = {
            "owner_user_id": str(self.user_id),
            "name": f"bench {frames} frames",
            "template_md5": f"{frames:02d}{ae_version}".ljust(32, "b")[:32],
            "template_url": "demo://bench",
            "ae_version": ae_version,
            "frame_rate": 30,
            "total_frames": frames,
            "duration_sec": frames / 30,
            "scenes": [{"scene_key": "all", "start_frame": 0, "end_frame": frames - 1}],
        }
        await self._call("PUT", f"/v1/catalog/projects/{project_id}", self.service, spec)

    async def credit(self, amount_minor: int) -> None:
        await self._call(
            "POST",
            f"/v1/billing/accounts/{self.user_id}/credit",
            self.service,
            {"amount_minor": amount_minor},
        )

    async def submit(self, project_id: UUID) -> UUID:
        spec = {"saved_project_id": str(project_id), "quality": "Low", "resolution": "HD"}
        job = await self._call("POST", "/v1/renders", self.user_token, spec)
        return UUID(job["id"])

    async def submit_many(self, projects: Sequence[UUID], concurrency: int = 8) -> list[UUID]:
        """Submit one job per entry of ``projects`` (in order of the list, roughly)."""
        gate = asyncio.Semaphore(concurrency)

        async def one(project: UUID) -> UUID:
            async with gate:
                return await self.submit(project)

        return list(await asyncio.gather(*(one(p) for p in projects)))

    async def cancel(self, job_id: UUID) -> None:
        try:
            await self._call("POST", f"/v1/renders/{job_id}/cancel", self.user_token, {})
        except ApiError as e:
            if "job_finished" not in str(e):
                raise

    async def register_node(self, name: str, ae_version: str) -> tuple[UUID, str]:
        body = {
            "name": name,
            "region": "local",
            "node_ip": "127.0.0.1",
            "worker_port": 9000,
            "current_ae_version": ae_version,
            "ram_gb": 32,
            "cpu_cores": 16,
        }
        node = await self._call("POST", "/v1/nodes", self.service, body)
        return UUID(node["id"]), node["node_secret"]

    async def healthz(self) -> bool:
        try:
            return (await self.http.get("/healthz")).status_code == 200
        except httpx.TransportError:
            return False


# ------------------------------------------------------------------ database


class Db:
    """One asyncpg connection for the benchmark's own reads (and a few set-up writes)."""

    def __init__(self, conn: asyncpg.Connection) -> None:
        self.conn = conn

    @classmethod
    async def connect(cls, url: str) -> Db:
        return cls(await asyncpg.connect(url))

    async def close(self) -> None:
        await self.conn.close()

    async def terminal_count(self, jobs: Sequence[UUID]) -> int:
        return int(
            await self.conn.fetchval(
                "SELECT count(*) FROM render_jobs WHERE id = ANY($1::uuid[]) "
                "AND step = ANY($2::text[])",
                list(jobs),
                list(TERMINAL),
            )
        )

    async def wait_terminal(
        self, jobs: Sequence[UUID], within_sec: float, poll: float = 0.5
    ) -> bool:
        deadline = time.monotonic() + within_sec
        while time.monotonic() < deadline:
            if await self.terminal_count(jobs) == len(jobs):
                return True
            await asyncio.sleep(poll)
        return False

    async def steps(self, jobs: Sequence[UUID]) -> dict[str, int]:
        rows = await self.conn.fetch(
            "SELECT step, count(*) AS n FROM render_jobs WHERE id = ANY($1::uuid[]) GROUP BY step",
            list(jobs),
        )
        return {r["step"]: int(r["n"]) for r in rows}

    async def ranges(self, jobs: Sequence[UUID]) -> list[RangeRow]:
        rows = await self.conn.fetch(
            "SELECT id, job_id, node_id, status, attempt, replaces_id, start_frame, end_frame, "
            "created_at, assigned_at, validated_at FROM frame_jobs WHERE job_id = ANY($1::uuid[])",
            list(jobs),
        )
        return [
            RangeRow(
                id=r["id"],
                job_id=r["job_id"],
                node_id=r["node_id"],
                status=r["status"],
                attempt=r["attempt"],
                replaces_id=r["replaces_id"],
                frames=r["end_frame"] - r["start_frame"] + 1,
                created=r["created_at"].timestamp(),
                assigned=_ts(r["assigned_at"]),
                validated=_ts(r["validated_at"]),
            )
            for r in rows
        ]

    async def render_commands(self, jobs: Sequence[UUID]) -> dict[UUID, CommandRow]:
        """RenderFrames commands of these jobs, by range id (the latest per range)."""
        rows = await self.conn.fetch(
            "SELECT id, node_id, created_at, acked_at, (payload->>'frame_job_id')::uuid AS range "
            "FROM node_commands WHERE type = 'RenderFrames' "
            "AND (payload->>'job_id')::uuid = ANY($1::uuid[]) ORDER BY created_at",
            list(jobs),
        )
        return {
            r["range"]: CommandRow(
                r["id"], r["node_id"], r["created_at"].timestamp(), _ts(r["acked_at"])
            )
            for r in rows
        }

    async def node_ids(self, prefix: str) -> dict[str, UUID]:
        rows = await self.conn.fetch("SELECT id, name FROM nodes WHERE name LIKE $1", prefix + "%")
        return {r["name"]: r["id"] for r in rows}

    async def count_status(self, names_like: str, status: str) -> int:
        return int(
            await self.conn.fetchval(
                "SELECT count(*) FROM nodes WHERE name LIKE $1 AND status = $2",
                names_like,
                status,
            )
        )


def _ts(value: datetime | None) -> float | None:
    return None if value is None else value.timestamp()


@dataclass(frozen=True)
class RangeRow:
    id: UUID
    job_id: UUID
    node_id: UUID | None
    status: str
    attempt: int
    replaces_id: UUID | None
    frames: int
    created: float  # unix seconds: the range became ready (Pending)
    assigned: float | None
    validated: float | None


@dataclass(frozen=True)
class CommandRow:
    id: UUID
    node_id: UUID
    created: float
    acked: float | None


# ------------------------------------------------------------------ simulated agents


class Agent:
    """``flatrender agent`` with N nodes named ``prefix-1..N``, in its own session."""

    def __init__(
        self,
        root: Path,
        port: int,
        token: str,
        prefix: str,
        nodes: int,
        *,
        frame_time: float,
        crash_rate: float = 0.0,
        seed: int = 1,
        log_name: str | None = None,
    ) -> None:
        self.prefix = prefix
        self.nodes = nodes
        self.log_path = root / f"agent-{log_name or prefix}.log"
        self.args = [
            *h.FLATRENDER,
            "agent",
            "--api",
            f"http://127.0.0.1:{port}",
            "--admin-token",
            token,
            "--nodes",
            str(nodes),
            "--name-prefix",
            prefix,
            "--state-file",
            str(root / f"agent-{prefix}.json"),
            "--frame-time",
            str(frame_time),
            "--ae-restart-delay",
            "0.1",
            "--crash-rate",
            str(crash_rate),
            "--seed",
            str(seed),
            "--log-level",
            "info",
        ]
        self.proc: subprocess.Popen[bytes] | None = None
        self.started_at = 0.0

    def start(self) -> Agent:
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                self.args,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=h.clean_environ(),
                start_new_session=True,
            )
        self.started_at = time.time()
        return self

    def kill(self) -> float:
        """SIGKILL (a power cut); returns the unix time of the kill."""
        proc, self.proc = self.proc, None
        when = time.time()
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
        return when

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


async def wait_nodes(
    db: Db, prefix: str, count: int, status: str, within_sec: float, agents: Iterable[Agent] = ()
) -> None:
    """Until ``count`` nodes named ``prefix-*`` are in ``status``; HarnessError on timeout."""
    deadline = time.monotonic() + within_sec
    while time.monotonic() < deadline:
        if await db.count_status(prefix + "-%", status) >= count:
            return
        for agent in agents:
            if agent.proc is not None and not agent.alive():
                raise h.HarnessError(f"agent {agent.prefix} exited:\n{agent.tail()}")
        await asyncio.sleep(0.25)
    seen = await db.count_status(prefix + "-%", status)
    raise h.HarnessError(f"only {seen} of {count} {prefix} nodes became {status} in {within_sec}s")


# ------------------------------------------------------------------ the agent's log

_LINE = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) \w+ flatrender\.agent: (.*)$")
_RECEIVED = re.compile(
    r"^node=(\S+) command=(\S+) RenderFrames job=(\S+) range=(\S+) frames=(\d+)\.\.(\d+)"
)
_DONE = re.compile(r"^node=(\S+) job=(\S+) range=(\S+) done$")
_CRASHED = re.compile(r"^node=(\S+) job=(\S+) range=(\S+) AE crashed \(SIGSEGV\) after frame")
_ANSWER = re.compile(r"^node=(\S+) job=(\S+) range=(\S+) crash answer: (\w+)")


@dataclass
class AgentEvents:
    received: dict[UUID, tuple[float, str]] = field(default_factory=dict)  # range -> (t, node)
    done: dict[UUID, tuple[float, str]] = field(default_factory=dict)  # range -> (t, node)
    crash_latencies: list[tuple[float, str]] = field(default_factory=list)  # (secs, action)
    by_node: dict[str, list[tuple[float, str, UUID]]] = field(default_factory=dict)


def log_time(text: str) -> float:
    return datetime.strptime(text, "%Y-%m-%d %H:%M:%S,%f").timestamp()


def agent_events(paths: Iterable[Path]) -> AgentEvents:
    """Timed events of every agent log in ``paths`` (times are the agent's log stamps, ms)."""
    events = AgentEvents()
    crashing: dict[tuple[str, str], float] = {}
    for path in paths:
        if not path.exists():
            continue
        for line in path.read_text(errors="replace").splitlines():
            m = _LINE.match(line)
            if m is None:
                continue
            when, text = log_time(m.group(1)), m.group(2)
            if (r := _RECEIVED.match(text)) is not None:
                range_id = UUID(r.group(4))
                events.received.setdefault(range_id, (when, r.group(1)))
                events.by_node.setdefault(r.group(1), []).append((when, "received", range_id))
            elif (r := _DONE.match(text)) is not None:
                range_id = UUID(r.group(3))
                events.done[range_id] = (when, r.group(1))
                events.by_node.setdefault(r.group(1), []).append((when, "done", range_id))
            elif (r := _CRASHED.match(text)) is not None:
                crashing[(r.group(1), r.group(3))] = when
            elif (r := _ANSWER.match(text)) is not None:
                began = crashing.pop((r.group(1), r.group(3)), None)
                if began is not None:
                    events.crash_latencies.append((when - began, r.group(4)))
    for timeline in events.by_node.values():
        timeline.sort(key=lambda e: e[0])
    return events


def new_ids(count: int) -> list[UUID]:
    return [uuid4() for _ in range(count)]
