"""The small part of systemd the daemon talks to: sd_notify, the watchdog and socket activation.

No libsystemd and no extra dependency: the protocols are tiny and stable.

* **sd_notify** (``man sd_notify``): one ``AF_UNIX`` ``SOCK_DGRAM`` datagram of newline-separated
  ``KEY=VALUE`` assignments sent to ``$NOTIFY_SOCKET``. The variable holds a filesystem path, or
  ``@name`` for the Linux abstract namespace (address ``\\0name``). Without the variable (not run
  by systemd, or ``Type=`` is not ``notify``) every call is a no-op that returns ``False``. A
  missing or refusing socket is logged at debug level and never raises: telling systemd is best
  effort and must not take the daemon down.
* **Watchdog** (``WatchdogSec=``): systemd sets ``WATCHDOG_USEC`` (and ``WATCHDOG_PID``); the
  service must send ``WATCHDOG=1`` more often than that, conventionally every half interval.
  :func:`watchdog_interval` gives that period and :func:`watchdog_loop` is the trio task that pings.
* **Socket activation** (``man sd_listen_fds``): systemd passes already-listening sockets as file
  descriptors 3, 4, ... with ``LISTEN_PID`` and ``LISTEN_FDS`` in the environment. Hypercorn accepts
  them as ``fd://N`` binds but does not read the variables itself: :func:`listen_fds` does, and
  :func:`hypercorn_binds` turns the result (or a host and port) into ``Config.bind``.

Typical start-up::

    cfg.bind = hypercorn_binds(listen_fds(), http.host, http.port)
    await nursery.start(partial(hypercorn.trio.serve, app, cfg, shutdown_trigger=stop.wait))
    if (period := watchdog_interval()) is not None:
        nursery.start_soon(watchdog_loop, period)
    ready()
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Sequence

import trio

__all__ = [
    "SD_LISTEN_FDS_START",
    "hypercorn_binds",
    "listen_fds",
    "notify",
    "ready",
    "reloading",
    "status",
    "stopping",
    "watchdog",
    "watchdog_interval",
    "watchdog_loop",
]

log = logging.getLogger(__name__)

#: The first file descriptor systemd passes for socket activation (0-2 are stdio).
SD_LISTEN_FDS_START = 3

# Upper bound on how long one notification may block the caller (and so the trio loop) when the
# receiver's queue is full. systemd drains its queue quickly; this only guards against a wedged
# peer.
_SEND_TIMEOUT_SEC = 1.0


def _notify_address(value: str) -> str | None:
    """Turn ``$NOTIFY_SOCKET`` into an ``AF_UNIX`` address, or None if the form is unsupported."""
    if value.startswith("@"):
        # Abstract namespace: a leading NUL byte instead of the '@'; the name is not a path.
        return "\0" + value[1:]
    if value.startswith("/"):
        return value
    # e.g. "vsock:CID:PORT" (systemd >= 253 in VMs): not something this daemon runs under.
    return None


def notify(state: str) -> bool:
    """Send one sd_notify datagram carrying ``state`` to ``$NOTIFY_SOCKET``.

    ``state`` is one or more newline-separated ``KEY=VALUE`` assignments (``"READY=1"``,
    ``"STATUS=..."``), sent verbatim as UTF-8 in a single datagram.

    Returns True when the datagram was handed to the kernel. Returns False, doing nothing, when
    ``NOTIFY_SOCKET`` is unset or empty. Never raises on a missing, refusing or full socket, nor on
    an address form it does not support: it logs at debug level and returns False. The environment
    variable is left in place (the watchdog keeps using it). May block the calling thread for at
    most about one second if the receiver's queue is full.
    """
    value = os.environ.get("NOTIFY_SOCKET", "")
    if not value:
        return False
    address = _notify_address(value)
    if address is None:
        log.debug("sd_notify: unsupported NOTIFY_SOCKET %r, not sending %r", value, state)
        return False
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.settimeout(_SEND_TIMEOUT_SEC)
            sock.sendto(state.encode("utf-8"), address)
    except OSError as exc:
        log.debug("sd_notify: could not send %r to %r: %s", state, value, exc)
        return False
    return True


def ready() -> bool:
    """Tell systemd start-up is complete (``READY=1``): ``Type=notify`` units become active."""
    return notify("READY=1")


def stopping() -> bool:
    """Tell systemd the service is shutting down (``STOPPING=1``); send it on SIGTERM."""
    return notify("STOPPING=1")


def reloading() -> bool:
    """Tell systemd a configuration reload has begun (``RELOADING=1``).

    Carries ``MONOTONIC_USEC`` (``CLOCK_MONOTONIC`` in microseconds), which systemd >= 253
    requires for ``Type=notify-reload`` and older versions ignore. Send :func:`ready` when the
    reload is done.
    """
    usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    return notify(f"RELOADING=1\nMONOTONIC_USEC={usec}")


def watchdog() -> bool:
    """Ping the service watchdog (``WATCHDOG=1``)."""
    return notify("WATCHDOG=1")


def status(text: str) -> bool:
    """Set the free-form status line ``systemctl status`` shows (``STATUS=text``).

    Newlines in ``text`` become spaces, since a newline would start a new assignment.
    """
    one_line = " ".join(text.splitlines())
    return notify(f"STATUS={one_line}")


def watchdog_interval() -> float | None:
    """The period in seconds at which to send ``WATCHDOG=1``, or None if no watchdog applies.

    Reads ``WATCHDOG_USEC`` (set by ``WatchdogSec=``) and returns half of it, in seconds, so one
    late ping does not trip the watchdog. Returns None when ``WATCHDOG_USEC`` is unset, not a
    positive integer, or when ``WATCHDOG_PID`` is set to something other than our pid (the
    variables were meant for another process, e.g. inherited from a parent). A malformed
    ``WATCHDOG_PID`` also gives None. Does not modify the environment.
    """
    raw_usec = os.environ.get("WATCHDOG_USEC")
    if not raw_usec:
        return None
    raw_pid = os.environ.get("WATCHDOG_PID")
    if raw_pid:
        try:
            pid = int(raw_pid)
        except ValueError:
            log.debug("watchdog: malformed WATCHDOG_PID %r", raw_pid)
            return None
        if pid != os.getpid():
            return None
    try:
        usec = int(raw_usec)
    except ValueError:
        log.debug("watchdog: malformed WATCHDOG_USEC %r", raw_usec)
        return None
    if usec <= 0:
        return None
    return usec / 1_000_000 / 2


async def watchdog_loop(interval: float) -> None:
    """Send ``WATCHDOG=1`` now and then every ``interval`` seconds, until cancelled.

    Meant to run as a task in the daemon's main nursery with ``interval`` from
    :func:`watchdog_interval`. Sleeps with :func:`trio.sleep`, so it follows trio's clock (a mock
    clock in tests). A ping that cannot be delivered is skipped, never raised. If the trio loop is
    stuck, the pings stop and systemd restarts the service: that is the point.

    Raises ValueError if ``interval`` is not positive.
    """
    if not interval > 0:
        raise ValueError(f"watchdog interval must be positive, got {interval!r}")
    while True:
        watchdog()
        await trio.sleep(interval)


def listen_fds(*, unset_environment: bool = True) -> list[int]:
    """File descriptors passed by systemd socket activation, like ``sd_listen_fds()``.

    When ``LISTEN_PID`` equals our pid and ``LISTEN_FDS`` is a positive integer n, returns
    ``[3, 4, ..., 3 + n - 1]``; otherwise (unset, another pid, malformed) returns ``[]``.
    With ``unset_environment`` (the default) ``LISTEN_PID``, ``LISTEN_FDS`` and ``LISTEN_FDNAMES``
    are removed from ``os.environ`` in every case, so child processes do not inherit them; a second
    call therefore returns ``[]``. The descriptors themselves are not touched (Hypercorn marks them
    inheritable and non-blocking when it wraps them).
    """
    try:
        raw_pid = os.environ.get("LISTEN_PID")
        raw_fds = os.environ.get("LISTEN_FDS")
        if not raw_pid or not raw_fds:
            return []
        try:
            pid = int(raw_pid)
            count = int(raw_fds)
        except ValueError:
            log.debug("listen_fds: malformed LISTEN_PID=%r LISTEN_FDS=%r", raw_pid, raw_fds)
            return []
        if pid != os.getpid() or count <= 0:
            return []
        return list(range(SD_LISTEN_FDS_START, SD_LISTEN_FDS_START + count))
    finally:
        if unset_environment:
            for name in ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"):
                os.environ.pop(name, None)


def hypercorn_binds(fds: Sequence[int], host: str, port: int) -> list[str]:
    """Hypercorn ``Config.bind`` values: ``["fd://3", ...]`` for inherited fds, else host:port.

    With no fds, returns ``[f"{host}:{port}"]``, with an IPv6 literal host in brackets
    (``"[::1]:8080"``). ``host`` and ``port`` are ignored when fds are given.
    """
    if fds:
        return [f"fd://{fd}" for fd in fds]
    if ":" in host and not host.startswith("["):
        return [f"[{host}]:{port}"]
    return [f"{host}:{port}"]
