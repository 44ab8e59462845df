"""Shutdown (DESIGN §8): SIGTERM closes idle connections at once and exits 0 fast."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import httpx
import pytest

from flatrender.config import Config
from tests.test_daemon import FLATRENDER, SVC_FIRST, _notify_socket, config_toml, free_port

GRACE_SEC = 10.0


@pytest.mark.slow
def test_sigterm_with_an_idle_keep_alive_connection_exits_0_well_under_grace(
    config: Config, tmp_path: Path
) -> None:
    port = free_port()
    path = tmp_path / "flatrender.toml"
    path.write_text(
        config_toml(config, port, [SVC_FIRST]).replace(
            "grace_sec = 3.0", f"grace_sec = {GRACE_SEC}"
        )
    )
    notify, notify_path = _notify_socket(tmp_path)
    env = {**os.environ, "NOTIFY_SOCKET": notify_path}
    log = (tmp_path / "serve.log").open("wb")
    proc = subprocess.Popen([*FLATRENDER, "serve", "--config", str(path)], env=env, stderr=log)
    try:
        assert notify.recv(4096) == b"READY=1"
        # One request, then the connection stays open and idle, as an agent's does.
        with httpx.Client(base_url=f"http://127.0.0.1:{port}") as client:
            assert client.get("/healthz").status_code == 200
            started = time.monotonic()
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(timeout=GRACE_SEC + 10) == 0
            took = time.monotonic() - started
        assert took < 2.0, f"SIGTERM to exit took {took:.2f}s"
    finally:
        if proc.poll() is None:
            proc.kill()
        notify.close()
