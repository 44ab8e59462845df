"""The daemon as a process: readiness, refusal on an old schema, SIGHUP reload, SIGTERM exit."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import attrs
import httpx
import pytest
import trio

from flatrender.config import Config
from flatrender.daemon import Daemon
from flatrender.persistence.migrate import SchemaBehind
from tests.helpers import bearer

FLATRENDER = [sys.executable, "-m", "flatrender.cli"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def config_toml(config: Config, port: int, service_tokens: list[str]) -> str:
    tokens = ", ".join(f'"{t}"' for t in service_tokens)
    return f"""
[http]
host = "127.0.0.1"
port = {port}
grace_sec = 3.0
[database]
url = "{config.database.url}"
[s3]
endpoint = "{config.s3.endpoint}"
access_key = "{config.s3.access_key}"
secret_key = "{config.s3.secret_key}"
bucket = "{config.s3.bucket}"
[auth]
jwt_secret = "{config.auth.jwt_secret}"
service_tokens = [{tokens}]
node_master_key = "{config.auth.node_master_key}"
"""


async def test_daemon_serves_and_reloads_in_process(config: Config, tmp_path: Path) -> None:
    path = tmp_path / "flatrender.toml"
    path.write_text(config_toml(config, 0, ["svc-first"]))
    daemon = Daemon(Config.load(path, {}), config_path=path)
    async with trio.open_nursery() as nursery:
        await nursery.start(daemon.run)
        base = daemon.binds[0]
        async with httpx.AsyncClient(base_url=base) as http:
            assert (await http.get("/healthz")).json() == {"status": "ok"}
            account = "/v1/billing/accounts/00000000-0000-0000-0000-000000000001"
            assert (await http.get(account, headers=bearer("svc-second"))).status_code == 401
            path.write_text(config_toml(config, 0, ["svc-first", "svc-second"]))
            daemon.reload()
            assert (await http.get(account, headers=bearer("svc-second"))).status_code == 200
            # A broken file keeps the running configuration.
            path.write_text("[http\n")
            daemon.reload()
            assert (await http.get(account, headers=bearer("svc-second"))).status_code == 200
        daemon.stop()


async def test_daemon_refuses_a_database_whose_schema_is_behind(config: Config, pg_server) -> None:
    url = pg_server.create_database("unmigrated")
    daemon = Daemon(attrs.evolve(config, database=attrs.evolve(config.database, url=url)))
    with pytest.raises(SchemaBehind, match="flatrender migrate"):
        await daemon.run()


def _notify_socket(tmp_path: Path) -> tuple[socket.socket, str]:
    path = str(tmp_path / "notify.sock")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    sock.settimeout(20)
    return sock, path


def _wait_http(url: str, deadline: float) -> None:
    while time.monotonic() < deadline:
        try:
            httpx.get(url, timeout=1)
            return
        except httpx.TransportError:
            time.sleep(0.05)
    raise AssertionError(f"{url} never answered")


@pytest.mark.slow
def test_serve_process_notifies_reloads_on_sighup_and_exits_0_on_sigterm(
    config: Config, tmp_path: Path
) -> None:
    port = free_port()
    path = tmp_path / "flatrender.toml"
    path.write_text(config_toml(config, port, ["svc-first"]))
    notify, notify_path = _notify_socket(tmp_path)
    env = {**os.environ, "NOTIFY_SOCKET": notify_path}
    log = (tmp_path / "serve.log").open("wb")
    proc = subprocess.Popen([*FLATRENDER, "serve", "--config", str(path)], env=env, stderr=log)
    try:
        assert notify.recv(4096) == b"READY=1"
        base = f"http://127.0.0.1:{port}"
        account = f"{base}/v1/billing/accounts/00000000-0000-0000-0000-000000000001"
        assert httpx.get(account, headers=bearer("svc-second")).status_code == 401

        path.write_text(config_toml(config, port, ["svc-first", "svc-second"]))
        proc.send_signal(signal.SIGHUP)
        assert notify.recv(4096).startswith(b"RELOADING=1")
        assert notify.recv(4096) == b"READY=1"
        assert httpx.get(account, headers=bearer("svc-second")).status_code == 200

        started = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        assert notify.recv(4096) == b"STOPPING=1"
        assert proc.wait(timeout=15) == 0
        assert time.monotonic() - started < 3.0 + 2
        with pytest.raises(httpx.TransportError):
            httpx.get(f"{base}/healthz", timeout=1)
    finally:
        if proc.poll() is None:
            proc.kill()
        notify.close()
    text = (tmp_path / "serve.log").read_text()
    assert "configuration reloaded" in text
    for secret in (config.auth.jwt_secret, config.auth.node_master_key, config.s3.secret_key):
        assert secret not in text


@pytest.mark.slow
def test_serve_exits_1_with_a_clear_line_on_an_old_schema(
    config: Config, pg_server, tmp_path: Path
) -> None:
    url = pg_server.create_database("unmigrated_cli")
    path = tmp_path / "flatrender.toml"
    path.write_text(
        config_toml(
            attrs.evolve(config, database=attrs.evolve(config.database, url=url)), free_port(), []
        )
    )
    done = subprocess.run(
        [*FLATRENDER, "serve", "--config", str(path)], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 1
    assert "run `flatrender migrate" in done.stderr


@pytest.mark.slow
def test_serve_exits_2_naming_a_bad_key(tmp_path: Path) -> None:
    path = tmp_path / "flatrender.toml"
    path.write_text("[http]\nport = 'eighty'\n")
    done = subprocess.run(
        [*FLATRENDER, "serve", "--config", str(path)], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 2
    assert done.stderr.strip().count("\n") == 0
    assert "[http] port" in done.stderr
