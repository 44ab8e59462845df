"""flatrender.systemd: sd_notify over a real datagram socket, watchdog, socket activation."""

from __future__ import annotations

import logging
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import time
import uuid
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path

import httpx
import pytest
import trio
import trio.testing
from hypercorn.config import Config
from hypercorn.trio import serve
from quart_trio import QuartTrio

from flatrender import systemd

REPO_ROOT = Path(__file__).resolve().parents[1]
SYSTEMD_VARS = (
    "NOTIFY_SOCKET",
    "WATCHDOG_USEC",
    "WATCHDOG_PID",
    "LISTEN_PID",
    "LISTEN_FDS",
    "LISTEN_FDNAMES",
)


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tests must not see (or send to) the systemd of whoever runs them."""
    for name in SYSTEMD_VARS:
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def notify_sock(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[socket.socket]:
    """A bound AF_UNIX datagram socket standing in for systemd; NOTIFY_SOCKET points at it."""
    path = tmp_path / "notify.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    sock.settimeout(2.0)
    monkeypatch.setenv("NOTIFY_SOCKET", str(path))
    yield sock
    sock.close()


def drain(sock: socket.socket) -> list[bytes]:
    """Every datagram still queued on ``sock``, without waiting."""
    out: list[bytes] = []
    timeout = sock.gettimeout()
    sock.setblocking(False)
    try:
        while True:
            out.append(sock.recv(4096))
    except BlockingIOError:
        return out
    finally:
        sock.settimeout(timeout)


# --- sd_notify --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("send", "expected"),
    [
        (systemd.ready, b"READY=1"),
        (systemd.watchdog, b"WATCHDOG=1"),
        (systemd.stopping, b"STOPPING=1"),
    ],
)
def test_notify_sends_exactly_one_datagram(
    notify_sock: socket.socket, send: Callable[[], bool], expected: bytes
) -> None:
    assert send() is True
    assert notify_sock.recv(4096) == expected
    assert drain(notify_sock) == []


def test_notify_sends_state_verbatim(notify_sock: socket.socket) -> None:
    assert systemd.notify("READY=1\nSTATUS=up") is True
    assert notify_sock.recv(4096) == b"READY=1\nSTATUS=up"


def test_status_is_one_line(notify_sock: socket.socket) -> None:
    assert systemd.status("serving\n3 nodes online") is True
    assert notify_sock.recv(4096) == b"STATUS=serving 3 nodes online"


def test_reloading_carries_monotonic_usec(notify_sock: socket.socket) -> None:
    before = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    assert systemd.reloading() is True
    after = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    first, second = notify_sock.recv(4096).decode().split("\n")
    assert first == "RELOADING=1"
    key, value = second.split("=")
    assert key == "MONOTONIC_USEC"
    assert before <= int(value) <= after


def test_notify_abstract_namespace(monkeypatch: pytest.MonkeyPatch) -> None:
    name = f"flatrender-test-{os.getpid()}-{uuid.uuid4().hex}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind("\0" + name)
        sock.settimeout(2.0)
        monkeypatch.setenv("NOTIFY_SOCKET", "@" + name)
        assert systemd.ready() is True
        assert sock.recv(4096) == b"READY=1"


@pytest.mark.parametrize("value", [None, ""])
def test_notify_without_socket_is_a_noop(
    monkeypatch: pytest.MonkeyPatch, value: str | None
) -> None:
    if value is not None:
        monkeypatch.setenv("NOTIFY_SOCKET", value)
    assert systemd.notify("READY=1") is False
    assert systemd.ready() is False
    assert systemd.watchdog() is False


def test_notify_missing_socket_does_not_raise(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "gone.sock"))
    with caplog.at_level(logging.DEBUG, logger="flatrender.systemd"):
        assert systemd.ready() is False
    assert any("READY=1" in r.getMessage() for r in caplog.records)
    assert all(r.levelno == logging.DEBUG for r in caplog.records)


def test_notify_unsupported_address_does_not_raise(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NOTIFY_SOCKET", "vsock:2:1234")
    assert systemd.ready() is False


# --- watchdog ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("usec", "pid", "expected"),
    [
        (None, None, None),
        ("30000000", None, 15.0),
        ("30000000", "self", 15.0),
        ("1000000", "self", 0.5),
        ("30000000", "other", None),
        ("30000000", "not-a-pid", None),
        ("0", None, None),
        ("-5", None, None),
        ("thirty", None, None),
        ("", None, None),
    ],
)
def test_watchdog_interval(
    monkeypatch: pytest.MonkeyPatch, usec: str | None, pid: str | None, expected: float | None
) -> None:
    if usec is not None:
        monkeypatch.setenv("WATCHDOG_USEC", usec)
    if pid == "self":
        monkeypatch.setenv("WATCHDOG_PID", str(os.getpid()))
    elif pid == "other":
        monkeypatch.setenv("WATCHDOG_PID", str(os.getpid() + 1))
    elif pid is not None:
        monkeypatch.setenv("WATCHDOG_PID", pid)
    assert systemd.watchdog_interval() == expected


async def test_watchdog_loop_pings_on_simulated_time(
    notify_sock: socket.socket, autojump_clock: trio.testing.MockClock
) -> None:
    receiver = trio.socket.from_stdlib_socket(notify_sock)
    pings: list[bytes] = []

    async def receive() -> None:
        while True:
            pings.append(await receiver.recv(4096))

    real_start = time.monotonic()
    start = trio.current_time()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(receive)
        nursery.start_soon(systemd.watchdog_loop, 5.0)
        # Pings at t = 0, 5, ..., 60: thirteen of them (more than the kernel's default
        # max_dgram_qlen of 10, hence the concurrent receiver).
        await trio.sleep(62.0)
        nursery.cancel_scope.cancel()
    pings.extend(drain(notify_sock))
    assert pings == [b"WATCHDOG=1"] * 13
    assert trio.current_time() - start == pytest.approx(62.0)
    assert time.monotonic() - real_start < 5.0  # simulated, not slept


async def test_watchdog_loop_without_socket_keeps_running(
    autojump_clock: trio.testing.MockClock,
) -> None:
    with trio.move_on_after(100.0) as scope:
        await systemd.watchdog_loop(1.0)
    assert scope.cancelled_caught


@pytest.mark.parametrize("interval", [0.0, -1.0])
async def test_watchdog_loop_rejects_nonpositive_interval(interval: float) -> None:
    with pytest.raises(ValueError):
        await systemd.watchdog_loop(interval)


# --- socket activation ------------------------------------------------------------------------


def test_listen_fds_for_our_pid(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LISTEN_PID", str(os.getpid()))
    monkeypatch.setenv("LISTEN_FDS", "2")
    monkeypatch.setenv("LISTEN_FDNAMES", "http:metrics")
    assert systemd.listen_fds() == [3, 4]
    for name in ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"):
        assert name not in os.environ
    assert systemd.listen_fds() == []  # consumed


def test_listen_fds_for_another_pid(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LISTEN_PID", str(os.getpid() + 1))
    monkeypatch.setenv("LISTEN_FDS", "1")
    assert systemd.listen_fds() == []
    assert "LISTEN_PID" not in os.environ
    assert "LISTEN_FDS" not in os.environ


def test_listen_fds_can_keep_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LISTEN_PID", str(os.getpid()))
    monkeypatch.setenv("LISTEN_FDS", "1")
    assert systemd.listen_fds(unset_environment=False) == [3]
    assert os.environ["LISTEN_FDS"] == "1"


@pytest.mark.parametrize(
    ("pid", "fds"), [(None, None), ("self", None), (None, "1"), ("self", "x"), ("self", "0")]
)
def test_listen_fds_absent_or_malformed(
    monkeypatch: pytest.MonkeyPatch, pid: str | None, fds: str | None
) -> None:
    if pid is not None:
        monkeypatch.setenv("LISTEN_PID", str(os.getpid()))
    if fds is not None:
        monkeypatch.setenv("LISTEN_FDS", fds)
    assert systemd.listen_fds() == []


def test_hypercorn_binds() -> None:
    assert systemd.hypercorn_binds([3, 4], "0.0.0.0", 8080) == ["fd://3", "fd://4"]
    assert systemd.hypercorn_binds([], "127.0.0.1", 8080) == ["127.0.0.1:8080"]
    assert systemd.hypercorn_binds([], "::1", 8080) == ["[::1]:8080"]
    assert systemd.hypercorn_binds([], "[::1]", 8080) == ["[::1]:8080"]


def _ping_app() -> QuartTrio:
    app = QuartTrio(__name__)

    @app.route("/ping")
    async def ping() -> str:
        return "pong"

    return app


async def test_hypercorn_serves_on_inherited_fd() -> None:
    # The listening socket systemd would create from flatrender.socket; Hypercorn gets only its
    # descriptor number and takes ownership of that descriptor.
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    port = listener.getsockname()[1]
    fd = os.dup(listener.fileno())
    listener.close()

    cfg = Config()
    cfg.bind = systemd.hypercorn_binds([fd], "ignored.invalid", 1)
    cfg.accesslog = None
    stop = trio.Event()
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            binds = await nursery.start(
                partial(serve, _ping_app(), cfg, shutdown_trigger=stop.wait)
            )
            assert binds == [f"http://127.0.0.1:{port}"]
            async with httpx.AsyncClient() as client:
                response = await client.get(f"http://127.0.0.1:{port}/ping")
            stop.set()
    assert response.status_code == 200
    assert response.text == "pong"
    with pytest.raises(OSError):  # Hypercorn owned the descriptor and closed it on shutdown
        os.fstat(fd)


# A stand-in for systemd's exec step: move the listening socket to fd 3, set LISTEN_PID to the
# pid the service will have (exec keeps it) and exec the service.
_LAUNCHER = textwrap.dedent(
    """
    import os, sys
    fd = int(sys.argv[1])
    if fd != 3:
        os.dup2(fd, 3)
        os.close(fd)
    os.environ["LISTEN_PID"] = str(os.getpid())
    os.environ["LISTEN_FDS"] = "1"
    os.execv(sys.executable, [sys.executable, *sys.argv[2:]])
    """
)

_SERVICE = textwrap.dedent(
    """
    import os, signal
    from functools import partial
    import trio
    from hypercorn.config import Config
    from hypercorn.trio import serve
    from quart_trio import QuartTrio
    from flatrender import systemd

    app = QuartTrio("service")

    @app.route("/ping")
    async def ping():
        return "pong:" + ",".join(k for k in ("LISTEN_PID", "LISTEN_FDS") if k in os.environ)

    async def main():
        fds = systemd.listen_fds()
        assert fds == [3], fds
        cfg = Config()
        cfg.bind = systemd.hypercorn_binds(fds, "127.0.0.1", 1)
        cfg.accesslog = None
        stop = trio.Event()
        with trio.open_signal_receiver(signal.SIGTERM) as signals:
            async with trio.open_nursery() as nursery:
                await nursery.start(partial(serve, app, cfg, shutdown_trigger=stop.wait))
                systemd.ready()
                async for _ in signals:
                    systemd.stopping()
                    stop.set()
                    break

    trio.run(main)
    """
)


@pytest.mark.slow
async def test_socket_activation_end_to_end(
    tmp_path: Path, notify_sock: socket.socket, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A child started like systemd starts flatrender.service: fd 3, LISTEN_*, NOTIFY_SOCKET."""
    service = tmp_path / "service.py"
    service.write_text(_SERVICE)
    monkeypatch.setenv("PYTHONPATH", str(REPO_ROOT))
    receiver = trio.socket.from_stdlib_socket(notify_sock)

    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    port = listener.getsockname()[1]
    cmd = [sys.executable, "-c", _LAUNCHER, str(listener.fileno()), str(service)]
    with listener:
        proc = await trio.lowlevel.open_process(cmd, pass_fds=(listener.fileno(),))
    try:
        with trio.fail_after(30):
            assert await receiver.recv(4096) == b"READY=1"
            async with httpx.AsyncClient() as client:
                response = await client.get(f"http://127.0.0.1:{port}/ping")
            # Served on the inherited socket, and LISTEN_* were not left for children.
            assert response.status_code == 200
            assert response.text == "pong:"
            proc.send_signal(signal.SIGTERM)
            assert await receiver.recv(4096) == b"STOPPING=1"
            assert await proc.wait() == 0
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


def unit_settings(name: str) -> dict[str, list[str]]:
    """Every ``Key=value`` of a unit file in ``systemd/``, values in order (a key may repeat)."""
    settings: dict[str, list[str]] = {}
    for line in (REPO_ROOT / "systemd" / name).read_text().splitlines():
        if line and not line.startswith(("#", "[")):
            key, _, value = line.partition("=")
            settings.setdefault(key, []).append(value)
    return settings


def test_the_socket_listens_on_loopback_only_by_default() -> None:
    assert unit_settings("flatrender.socket")["ListenStream"] == ["127.0.0.1:8080"]


def test_the_service_unit_is_hardened() -> None:
    service = unit_settings("flatrender.service")
    expected = {
        "NoNewPrivileges": ["yes"],
        "CapabilityBoundingSet": [""],
        "ProtectSystem": ["strict"],
        "ProtectHome": ["yes"],
        "PrivateTmp": ["yes"],
        "PrivateDevices": ["yes"],
        "PrivateUsers": ["yes"],
        "PrivateIPC": ["yes"],
        "PrivateMounts": ["yes"],
        "ProtectProc": ["invisible"],
        "ProcSubset": ["pid"],
        "DevicePolicy": ["closed"],
        "UMask": ["0077"],
        "RestrictAddressFamilies": ["AF_UNIX AF_INET AF_INET6"],
        "SystemCallFilter": ["@system-service", "~@privileged @resources"],
        "SystemCallErrorNumber": ["EPERM"],
        "SystemCallArchitectures": ["native"],
        "RemoveIPC": ["yes"],
    }
    assert {key: service.get(key) for key in expected} == expected


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="needs systemd-analyze")
def test_the_service_units_exposure_is_at_most_2() -> None:
    done = subprocess.run(
        ["systemd-analyze", "security", "--offline=yes", "--threshold=20"]
        + [str(REPO_ROOT / "systemd" / "flatrender.service")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    found = re.search(r"Overall exposure level for flatrender.service: (\d+\.\d)", done.stdout)
    assert found is not None, done.stdout + done.stderr
    assert float(found.group(1)) <= 2.0
