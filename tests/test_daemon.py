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
from flatrender.storage import StorageError, StorageUnavailable
from tests.helpers import bearer

FLATRENDER = [sys.executable, "-m", "flatrender.cli"]
# Service tokens long enough for the configuration's checks (24 characters and more).
SVC_FIRST = "svc-first-0123456789abcdef"
SVC_SECOND = "svc-second-0123456789abcdef"


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
    path.write_text(config_toml(config, 0, [SVC_FIRST]))
    daemon = Daemon(Config.load_for_serve(path), config_path=path)
    async with trio.open_nursery() as nursery:
        await nursery.start(daemon.run)
        base = daemon.binds[0]
        async with httpx.AsyncClient(base_url=base) as http:
            assert (await http.get("/healthz")).json() == {"status": "ok"}
            account = "/v1/billing/accounts/00000000-0000-0000-0000-000000000001"
            assert (await http.get(account, headers=bearer(SVC_SECOND))).status_code == 401
            path.write_text(config_toml(config, 0, [SVC_FIRST, SVC_SECOND]))
            daemon.reload()
            assert (await http.get(account, headers=bearer(SVC_SECOND))).status_code == 200
            # A broken file keeps the running configuration.
            path.write_text("[http\n")
            daemon.reload()
            assert (await http.get(account, headers=bearer(SVC_SECOND))).status_code == 200
        daemon.stop()


def with_auth(config: Config, **changes: object) -> Config:
    return attrs.evolve(config, auth=attrs.evolve(config.auth, **changes))


def with_s3(config: Config, **changes: object) -> Config:
    return attrs.evolve(config, s3=attrs.evolve(config.s3, **changes))


@pytest.mark.parametrize(
    ("bad", "extra", "named"),
    [
        ({"node_master_key": ""}, "", "[auth] node_master_key: must be set"),
        ({"node_master_key": "k" * 31}, "", "[auth] node_master_key: must be at least 32"),
        ({"jwt_secret": "too-short"}, "", "[auth] jwt_secret: must be at least 32"),
        ({}, "[exports]\ndownload_url_ttl_sec = 604801\n", "[exports] download_url_ttl_sec"),
        ({}, "signature_max_skew_sec = -1\n", "[auth] signature_max_skew_sec"),
    ],
)
async def test_a_reload_failing_a_start_up_check_keeps_the_running_configuration(
    config: Config,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    bad: dict[str, str],
    extra: str,
    named: str,
) -> None:
    path = tmp_path / "flatrender.toml"
    path.write_text(config_toml(config, 0, [SVC_FIRST]))
    daemon = Daemon(Config.load_for_serve(path), config_path=path)
    async with trio.open_nursery() as nursery:
        await nursery.start(daemon.run)
        running = daemon.config
        assert daemon.app_state is not None
        account = "/v1/billing/accounts/00000000-0000-0000-0000-000000000001"
        # The refused file also removes the first token and adds a second: neither happens.
        path.write_text(config_toml(with_auth(config, **bad), 0, [SVC_SECOND]) + extra)
        daemon.reload()
        assert daemon.config is running and daemon.app_state.config is running
        refused = [r.getMessage() for r in caplog.records if "reload refused" in r.getMessage()]
        assert len(refused) == 1 and named in refused[0]
        async with httpx.AsyncClient(base_url=daemon.binds[0]) as http:
            assert (await http.get(account, headers=bearer(SVC_FIRST))).status_code == 200
            assert (await http.get(account, headers=bearer(SVC_SECOND))).status_code == 401
        daemon.stop()


async def test_a_reload_applies_new_s3_credentials_and_defers_another_bucket(
    config: Config, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "flatrender.toml"
    path.write_text(config_toml(config, 0, [SVC_FIRST]))
    daemon = Daemon(Config.load_for_serve(path), config_path=path)
    async with trio.open_nursery() as nursery:
        await nursery.start(daemon.run)
        store = daemon.store
        assert store is not None and daemon.app_state is not None
        assert daemon.app_state.store is store
        await store.put_bytes("reload/a.bin", b"a")

        path.write_text(config_toml(with_s3(config, secret_key="wrong-secret-key"), 0, [SVC_FIRST]))
        daemon.reload()
        assert daemon.config.s3.secret_key == "wrong-secret-key"
        with pytest.raises(StorageError) as refused:
            await store.get_bytes("reload/a.bin")
        assert not isinstance(refused.value, StorageUnavailable)

        path.write_text(config_toml(with_s3(config, bucket="another-bucket"), 0, [SVC_FIRST]))
        daemon.reload()
        assert "[s3] bucket changed: takes effect after a restart" in caplog.text
        assert daemon.config.s3.bucket == config.s3.bucket
        assert await store.get_bytes("reload/a.bin") == b"a"  # the right key again
        daemon.stop()


async def test_an_s3_endpoint_given_as_a_url_serves(config: Config) -> None:
    daemon = Daemon(with_s3(config, endpoint=f"http://{config.s3.endpoint}"))
    async with trio.open_nursery() as nursery:
        await nursery.start(daemon.run)
        assert daemon.store is not None
        await daemon.store.put_bytes("url/a.bin", b"url")
        assert await daemon.store.get_bytes("url/a.bin") == b"url"
        async with httpx.AsyncClient(base_url=daemon.binds[0]) as http:
            assert (await http.get("/healthz")).json() == {"status": "ok"}
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
    path.write_text(config_toml(config, port, [SVC_FIRST]))
    notify, notify_path = _notify_socket(tmp_path)
    env = {**os.environ, "NOTIFY_SOCKET": notify_path}
    log = (tmp_path / "serve.log").open("wb")
    proc = subprocess.Popen([*FLATRENDER, "serve", "--config", str(path)], env=env, stderr=log)
    try:
        assert notify.recv(4096) == b"READY=1"
        base = f"http://127.0.0.1:{port}"
        account = f"{base}/v1/billing/accounts/00000000-0000-0000-0000-000000000001"
        assert httpx.get(account, headers=bearer(SVC_SECOND)).status_code == 401

        path.write_text(config_toml(config, port, [SVC_FIRST, SVC_SECOND]))
        proc.send_signal(signal.SIGHUP)
        assert notify.recv(4096).startswith(b"RELOADING=1")
        assert notify.recv(4096) == b"READY=1"
        assert httpx.get(account, headers=bearer(SVC_SECOND)).status_code == 200

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
