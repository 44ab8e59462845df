"""Embedded PostgreSQL 16 from pip ``pgserver``, on a Unix socket in its data folder."""

from __future__ import annotations

import atexit
import contextlib
import json
import logging
import os
import re
import signal
import subprocess
import time
import urllib.parse
from pathlib import Path
from types import TracebackType
from typing import Any, Self

from flatrender.embedded._process import EmbeddedServiceError, Watchdog, pid_alive, tail

_log = logging.getLogger(__name__)

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


class EmbeddedPostgres:
    """PostgreSQL from ``pgserver`` in ``data_dir`` (the PGDATA folder; created when missing).

    ``url`` is ``postgresql://postgres@/postgres?host=<socket dir>`` (trust auth), which
    asyncpg/triopg and psql accept. An existing data folder is reused.

    ``runtime_dir`` becomes ``$XDG_RUNTIME_DIR`` when that is unset (default: ``run`` beside
    ``data_dir``); it must be set before ``pgserver`` is first imported. As root, pgserver runs the
    server as system user ``pgserver`` (created on first use) and makes every parent folder of
    ``data_dir`` world-traversable. ``delete_on_stop`` removes the data folder in :meth:`stop`.

    pgserver shares one server among the processes that use a data folder and stops it when the
    last one lets go. When this process is the only one, a watchdog stops the server (a fast,
    then an immediate shutdown) should this process die without :meth:`stop`.
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
        self._watchdog: Watchdog | None = None

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self) -> Self:
        """Start (or join) the server; idempotent. Raises :class:`EmbeddedServiceError`."""
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
                f"embedded PostgreSQL in {self.data_dir} did not start: {e}\n"
                f"{tail(self.log_path, 30)}"
            ) from e
        info = server.get_postmaster_info()
        self._server = server
        self._socket_dir = Path(info.socket_dir) if info.socket_dir else self.data_dir
        self._port = int(info.port or 5432)
        if sole_owner and info.pid:
            self._watchdog = Watchdog(info.pid, signal.SIGINT, signal.SIGQUIT)
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
        new database is empty. Names are 1-63 of ``[a-z0-9_]`` (else :class:`ValueError`).
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
        """Run ``commands`` in one psql session on ``postgres``; return its unaligned output."""
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
        alive = [p for p in pids if isinstance(p, int) and p != os.getpid() and pid_alive(p)]
        if alive != pids:
            with contextlib.suppress(OSError):
                path.write_text(json.dumps(alive))
        return not alive
