"""Process plumbing shared by the embedded servers: the watchdog, pid checks, log tails.

The watchdog: a server's ``stop()`` runs from ``__exit__`` and from ``atexit``, but a process
killed by SIGKILL, or by a SIGTERM it does not handle, runs neither. So each server also gets a
tiny watchdog process (no ``prctl``): it holds the read end of a pipe whose write end only this
process has, and when the pipe reports end-of-file (this process is gone) it stops the server.
A clean ``stop()`` disarms it by killing it. It runs in its own session, so Ctrl-C in a
terminal reaches only this process, which then stops the servers in order.
"""

from __future__ import annotations

import contextlib
import io
import os
import signal
import subprocess
import sys
import time
from pathlib import Path


class EmbeddedServiceError(RuntimeError):
    """An embedded server could not be started or used; the message includes its log tail."""


# Runs with ``python -I -S``: argv is pid, first signal, grace seconds, last signal.
# The pidfd (Linux) makes sure a recycled pid is never signalled; elsewhere it polls kill(0).
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
os.read(0, 1)  # returns at end of file: the owner is gone (it disarms us with SIGKILL)

def send(sig):
    try:
        if pidfd is not None:
            signal.pidfd_send_signal(pidfd, sig)
        else:
            os.kill(pid, sig)
    except ProcessLookupError:
        pass

def gone(timeout):
    if pidfd is not None:
        return bool(select.select([pidfd], [], [], timeout)[0])
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.05)
    return False

send(first)
if not gone(grace):
    send(last)
"""


class Watchdog:
    """A sibling process that stops ``pid`` once this process is gone (see module docstring).

    It sends ``first`` at once, then ``last`` if ``pid`` still lives ``grace`` seconds later.
    """

    def __init__(
        self, pid: int, first: signal.Signals, last: signal.Signals, grace: float = 10.0
    ) -> None:
        args = (str(pid), str(int(first)), str(grace), str(int(last)))
        self._proc: subprocess.Popen[bytes] | None = subprocess.Popen(
            [sys.executable, "-I", "-S", "-c", _WATCHDOG_SOURCE, *args],
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
            close_fds=True,
        )

    def disarm(self) -> None:
        """Stop watching (the server is left alone); idempotent."""
        proc, self._proc = self._proc, None
        if proc is not None:
            with proc:  # closes our end of the pipe and reaps the watchdog
                proc.kill()


def pid_alive(pid: int) -> bool:
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


def terminate(pid: int, grace: float = 10.0) -> None:
    """SIGTERM ``pid``, SIGKILL it if it still lives ``grace`` seconds later; wait for it.

    For processes that are not our children (ours would stay zombies: use ``Popen`` instead).
    Gives up silently 5 s after SIGKILL.
    """
    for sig, timeout in ((signal.SIGTERM, grace), (signal.SIGKILL, 5.0)):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)
        deadline = time.monotonic() + timeout
        while pid_alive(pid):
            if time.monotonic() > deadline:
                break
            time.sleep(0.05)
        else:
            return


def cmdline(pid: int) -> bytes:
    """The NUL-separated command line of ``pid`` (empty when unknown)."""
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


def tail(path: Path, lines: int) -> str:
    """The last ``lines`` lines of the log at ``path`` (from its last 64 KiB)."""
    try:
        with open(path, "rb") as f:
            f.seek(0, io.SEEK_END)
            f.seek(max(0, f.tell() - 64 * 1024))
            text = f.read().decode("utf-8", "replace")
    except OSError:
        return f"(no log at {path})"
    return "\n".join(text.splitlines()[-lines:])
