"""Bring up a real FlatRender daemon for a benchmark, and measure it from the outside.

- :func:`environment`: embedded PostgreSQL and S3 in a temporary folder, a migrated database and
  a configuration file; everything is stopped and removed on exit (Ctrl-C included).
- :func:`register_nodes`: N nodes inserted in bulk (COPY), all ``Offline`` like freshly
  registered nodes.
- :class:`DaemonProcess`: ``flatrender serve`` as a subprocess (its CPU and memory are its own),
  ready when it sends systemd's ``READY=1`` to our ``NOTIFY_SOCKET``.
- :class:`CpuMeter`: CPU seconds of the daemon, of PostgreSQL (postmaster and backends) and of
  this process, read from ``/proc``.
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from uuid import UUID, uuid4

import asyncpg

from flatrender.embedded import EmbeddedPostgres, EmbeddedS3

CLK_TCK = os.sysconf("SC_CLK_TCK")
FLATRENDER = [sys.executable, "-m", "flatrender.cli"]
DB_NAME = "flatrender_bench"


class HarnessError(RuntimeError):
    """The benchmark could not set itself up; the message says what failed."""


# ------------------------------------------------------------------ environment


@dataclass
class Environment:
    root: Path
    pg: EmbeddedPostgres
    s3: EmbeddedS3
    db_url: str
    config_path: Path
    port: int
    node_master_key: str

    @property
    def log_path(self) -> Path:
        return self.root / "daemon.log"


@contextlib.contextmanager
def environment(keep: bool = False, log_level: str = "INFO") -> Iterator[Environment]:
    """Services, database and configuration in a fresh temporary folder."""
    root = Path(tempfile.mkdtemp(prefix="flatrender-bench-"))
    try:
        with (
            EmbeddedPostgres(root / "pg" / "data", delete_on_stop=not keep) as pg,
            EmbeddedS3(root / "s3", bucket="flatrender-bench") as s3,
        ):
            env = Environment(
                root=root,
                pg=pg,
                s3=s3,
                db_url=pg.create_database(DB_NAME),
                config_path=root / "flatrender.toml",
                port=free_port(),
                node_master_key=secrets.token_hex(16),
            )
            env.config_path.write_text(config_toml(env, log_level))
            migrate(env.config_path, root / "migrate.log")
            yield env
    finally:
        if keep:
            print(f"(kept {root})", file=sys.stderr)
        else:
            shutil.rmtree(root, ignore_errors=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def config_toml(env: Environment, log_level: str) -> str:
    return f"""
[http]
host = "127.0.0.1"
port = {env.port}
grace_sec = 3.0
[database]
url = "{env.db_url}"
[s3]
endpoint = "{env.s3.endpoint}"
access_key = "{env.s3.access_key}"
secret_key = "{env.s3.secret_key}"
bucket = "{env.s3.bucket}"
[auth]
jwt_secret = "{secrets.token_hex(32)}"
service_tokens = ["{secrets.token_hex(16)}"]
node_master_key = "{env.node_master_key}"
[nodes]
heartbeat_interval_sec = 5
heartbeat_timeout_sec = 15
[log]
level = "{log_level}"
"""


def clean_environ() -> dict[str, str]:
    """Our environment without FLATRENDER_* overrides, so only the config file counts."""
    return {k: v for k, v in os.environ.items() if not k.startswith("FLATRENDER_")}


def migrate(config_path: Path, log_path: Path) -> None:
    with log_path.open("wb") as log:
        done = subprocess.run(
            [*FLATRENDER, "migrate", "--config", str(config_path)],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=clean_environ(),
            timeout=120,
        )
    if done.returncode != 0:
        raise HarnessError(f"flatrender migrate failed:\n{log_path.read_text()[-2000:]}")


# ------------------------------------------------------------------ database


async def register_nodes(db_url: str, count: int) -> list[UUID]:
    """Insert ``count`` nodes (status Offline, as registered) with one COPY."""
    ids = [uuid4() for _ in range(count)]
    records = [
        (
            node_id,
            f"bench-{i:05d}",
            "bench",
            f"10.{i // 65536 % 256}.{i // 256 % 256}.{i % 256}",
            5000,
            "2024",
        )
        for i, node_id in enumerate(ids)
    ]
    conn = await asyncpg.connect(db_url)
    try:
        await conn.copy_records_to_table(
            "nodes",
            records=records,
            columns=["id", "name", "region", "node_ip", "worker_port", "current_ae_version"],
        )
    finally:
        await conn.close()
    return ids


async def query(db_url: str, sql: str, *args: object) -> object:
    """One value from one statement, on a connection of its own."""
    conn = await asyncpg.connect(db_url)
    try:
        return await conn.fetchval(sql, *args)
    finally:
        await conn.close()


# ------------------------------------------------------------------ the daemon


class DaemonProcess:
    """``flatrender serve`` in its own session, logging to ``log_path``."""

    def __init__(self, config_path: Path, log_path: Path, port: int) -> None:
        self.config_path = config_path
        self.log_path = log_path
        self.port = port
        self.proc: subprocess.Popen[bytes] | None = None
        self._notify: socket.socket | None = None

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def start(self, timeout: float = 120.0) -> float:
        """Start and wait for READY=1; returns the seconds it took."""
        notify_path = str(self.log_path.parent / "notify.sock")
        with contextlib.suppress(FileNotFoundError):
            os.unlink(notify_path)
        self._notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._notify.bind(notify_path)
        self._notify.settimeout(0.5)
        env = {**clean_environ(), "NOTIFY_SOCKET": notify_path}
        env.pop("WATCHDOG_USEC", None)
        started = time.monotonic()
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                [*FLATRENDER, "serve", "--config", str(self.config_path)],
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,  # Ctrl-C reaches the bench only; it stops us in order
            )
        self._wait_ready(started + timeout)
        return time.monotonic() - started

    def _wait_ready(self, deadline: float) -> None:
        assert self.proc is not None and self._notify is not None
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise HarnessError(f"the daemon exited with {self.proc.returncode}:\n{self.tail()}")
            try:
                if self._notify.recv(4096).startswith(b"READY=1"):
                    return
            except TimeoutError:
                continue
        raise HarnessError(f"the daemon was not ready in time:\n{self.tail()}")

    def stop(self, timeout: float = 20.0) -> int | None:
        """SIGTERM, then SIGKILL after ``timeout``; returns the exit code."""
        proc, self.proc = self.proc, None
        if self._notify is not None:
            self._notify.close()
            self._notify = None
        if proc is None:
            return None
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        return proc.returncode

    def rss(self) -> tuple[int, int]:
        """(VmRSS, VmHWM) in bytes."""
        return proc_rss(self.pid)

    def tail(self, lines: int = 30) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])


# ------------------------------------------------------------------ /proc


def proc_cpu_ticks(pid: int) -> int:
    """utime + stime of ``pid`` (all its threads), in clock ticks; 0 when it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0
    fields = stat.rpartition(")")[2].split()
    return int(fields[11]) + int(fields[12])


def proc_rss(pid: int) -> tuple[int, int]:
    values = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, rest = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            values[key] = int(rest.split()[0]) * 1024
    return values.get("VmRSS", 0), values.get("VmHWM", 0)


def children_of(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rpartition(")")[2].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.append(int(entry.name))
    return found


def postmaster_pid(pg: EmbeddedPostgres) -> int:
    return int((pg.data_dir / "postmaster.pid").read_text().split()[0])


def postgres_pids(pg: EmbeddedPostgres) -> list[int]:
    pm = postmaster_pid(pg)
    return [pm, *children_of(pm)]


class CpuMeter:
    """CPU seconds used between :meth:`start` and :meth:`stop` by the daemon, PostgreSQL, us."""

    def __init__(self, daemon: DaemonProcess, pg: EmbeddedPostgres) -> None:
        self.daemon = daemon
        self.pg = pg
        self._t0 = 0.0
        self._daemon0 = 0
        self._pg0: dict[int, int] = {}
        self._self0 = 0.0
        self.wall = self.daemon_sec = self.postgres_sec = self.self_sec = 0.0

    def start(self) -> CpuMeter:
        self._t0 = time.monotonic()
        self._daemon0 = proc_cpu_ticks(self.daemon.pid)
        self._pg0 = {pid: proc_cpu_ticks(pid) for pid in postgres_pids(self.pg)}
        self._self0 = time.process_time()
        return self

    def stop(self) -> CpuMeter:
        self.wall = time.monotonic() - self._t0
        self.daemon_sec = (proc_cpu_ticks(self.daemon.pid) - self._daemon0) / CLK_TCK
        ticks = 0
        for pid in postgres_pids(self.pg):
            ticks += proc_cpu_ticks(pid) - self._pg0.get(pid, 0)
        self.postgres_sec = ticks / CLK_TCK
        self.self_sec = time.process_time() - self._self0
        return self

    def pct(self, seconds: float) -> float:
        """Per cent of one core over the measured wall time."""
        return 100.0 * seconds / self.wall if self.wall > 0 else float("nan")


def wait_idle(
    pid: int, below_pct: float = 3.0, window: float = 1.0, timeout: float = 60.0
) -> float:
    """Wait until ``pid`` uses less than ``below_pct`` of a core over ``window``; returns it."""
    deadline = time.monotonic() + timeout
    pct = float("nan")
    while time.monotonic() < deadline:
        t0 = proc_cpu_ticks(pid)
        time.sleep(window)
        pct = 100.0 * (proc_cpu_ticks(pid) - t0) / CLK_TCK / window
        if pct < below_pct:
            break
    return pct


# ------------------------------------------------------------------ the daemon's log

_TRANSITION = re.compile(
    r"^(\S+ \S+) INFO flatrender\.node: node (\S+): (\w+) -> Offline", re.MULTILINE
)
_FLEET_UP = re.compile(r"fleet up: (\d+) node actors")


def offline_transitions(log_path: Path) -> list[tuple[float, str]]:
    """(unix time, node id) of every ``-> Offline`` transition the daemon logged."""
    found = []
    for match in _TRANSITION.finditer(log_path.read_text(errors="replace")):
        when = datetime.strptime(match.group(1), "%Y-%m-%d %H:%M:%S,%f").timestamp()
        found.append((when, match.group(2)))
    return found


def fleet_size(log_path: Path) -> int | None:
    """The number of node actors the daemon said it started."""
    match = _FLEET_UP.search(log_path.read_text(errors="replace"))
    return int(match.group(1)) if match else None
