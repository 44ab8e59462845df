"""``flatrender watch JOB_ID``: follow a render live over the progress WebSocket (DESIGN §5).

A progress bar on a terminal (plain lines otherwise) until the job ends, then the export's
download link (or its id when the link cannot be had). Exit status: 0 Completed, 1 Failed or
Cancelled, 2 refused (token, ownership, no such job), 3 the orchestrator could not be reached
(or kept closing on us), 4 it reported an error (close 1011, or 1008 for a protocol violation).
A close 1001 (the daemon restarts) or 1013 (we read too slowly) or a cut connection is followed
by a reconnect, whose snapshot resyncs: at most ``RECONNECTS`` over the whole watch, each after
a longer wait (1 s, 2 s, 4 s ... up to 30 s). A message received does not reset the count, so a
server that sends a snapshot and then closes is not retried forever.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TextIO
from uuid import UUID

import attrs
import httpx
import trio
from trio_websocket import ConnectionClosed, HandshakeError, open_websocket_url

OK, ENDED_BADLY, REFUSED, UNREACHABLE, SERVER_ERROR = 0, 1, 2, 3, 4
REFUSALS = {4401: "the token was refused", 4403: "not your job", 4404: "no such job"}
SERVER_ERRORS = {1011: "the orchestrator had an internal error", 1008: "protocol violation"}
RECONNECTS = 10  # over the whole watch
RECONNECT_DELAY_SEC = 1.0  # doubled after each reconnect
RECONNECT_DELAY_MAX_SEC = 30.0
BAR_WIDTH = 30


@attrs.frozen
class Target:
    api_url: str  # http(s)://host:port, without /v1
    ws_url: str  # ws(s)://host:port/ws/v1/render/<job_id>
    token: str
    job_id: UUID


def target(job_id: UUID, api: str | None, token: str | None, state_dir: Path) -> Target:
    """From the options, else from ``<state_dir>/dev.json`` (written by ``flatrender dev``)."""
    dev: dict[str, Any] = {}
    dev_file = state_dir / "dev.json"
    if dev_file.exists():
        dev = json.loads(dev_file.read_text())
    base = api or dev.get("api_url") or "http://127.0.0.1:8080"
    base = base.rstrip("/").removesuffix("/v1")
    ws_base = base.replace("https://", "wss://", 1).replace("http://", "ws://", 1) + "/ws/v1"
    if api is None and dev.get("ws_url"):
        ws_base = str(dev["ws_url"]).rstrip("/")
    chosen = token or dev.get("user_token") or ""
    return Target(base, f"{ws_base}/render/{job_id}", chosen, job_id)


class Display:
    """A redrawn bar on a terminal; a line per change of step or percent otherwise."""

    def __init__(self, out: TextIO, tty: bool) -> None:
        self.out, self.tty = out, tty
        self._last: tuple[str, int] | None = None

    def show(self, p: dict[str, Any]) -> None:
        if self.tty:
            self.out.write("\r\x1b[2K" + bar_line(p))
            self.out.flush()
            return
        key = (str(p.get("step")), int(p.get("progress") or 0))
        if key != self._last:
            self._last = key
            print(bar_line(p, bar=False), file=self.out, flush=True)

    def done(self) -> None:
        if self.tty:
            self.out.write("\n")
            self.out.flush()


def bar_line(p: dict[str, Any], *, bar: bool = True) -> str:
    percent = int(p.get("progress") or 0)
    total = p.get("total_frames")
    frame = p.get("current_frame")
    frames = f"frame {'-' if frame is None else frame}/{'?' if total is None else total}"
    eta = p.get("eta_seconds")
    eta_text = "ETA --:--" if eta is None else f"ETA {int(eta) // 60:d}:{int(eta) % 60:02d}"
    parts = [f"{percent:3d}%", frames, eta_text, f"nodes {p.get('active_nodes', 0)}"]
    parts.append(str(p.get("step")))
    if p.get("message"):
        parts.append(f"({p['message']})")
    if bar:
        filled = BAR_WIDTH * percent // 100
        parts.insert(0, "[" + "#" * filled + "." * (BAR_WIDTH - filled) + "]")
    return "  ".join(parts)


def reconnect_delay(reconnects: int) -> float:
    """The wait before reconnect number ``reconnects`` (1, 2, ...)."""
    return min(RECONNECT_DELAY_SEC * 2.0 ** (reconnects - 1), RECONNECT_DELAY_MAX_SEC)


async def watch(
    t: Target,
    out: TextIO,
    err: TextIO,
    *,
    tty: bool,
    sleep: Callable[[float], Awaitable[None]] = trio.sleep,
) -> int:
    display = Display(out, tty)
    last: dict[str, Any] | None = None
    headers = [(b"Authorization", f"Bearer {t.token}".encode())] if t.token else []
    reconnects = 0
    while True:
        code: int | None = None
        try:
            async with open_websocket_url(t.ws_url, extra_headers=headers) as ws:
                while True:
                    try:
                        message = await ws.get_message()
                    except ConnectionClosed as e:
                        code = None if e.reason is None else e.reason.code
                        break
                    last = json.loads(message)
                    display.show(last)
        except (OSError, HandshakeError, ConnectionClosed) as e:
            code = None
            reason = str(e) or type(e).__name__
        else:
            reason = f"closed {code}"
        if code == 1000 and last is not None:
            display.done()
            return await _finish(t, last, out, err)
        if code in REFUSALS:
            display.done()
            print(f"flatrender watch: {REFUSALS[code]} ({code})", file=err)
            return REFUSED
        if code in SERVER_ERRORS:
            display.done()
            print(f"flatrender watch: {SERVER_ERRORS[code]} ({code})", file=err)
            return SERVER_ERROR
        reconnects += 1
        if reconnects > RECONNECTS:
            display.done()
            print(f"flatrender watch: giving up on {t.ws_url}: {reason}", file=err)
            return UNREACHABLE
        await sleep(reconnect_delay(reconnects))  # 1001, 1013 or a cut connection: resync


async def _finish(t: Target, last: dict[str, Any], out: TextIO, err: TextIO) -> int:
    step = last.get("step")
    if step != "Completed":
        why = f": {last['message']}" if last.get("message") else ""
        print(f"job {t.job_id} {step}{why}", file=err)
        return ENDED_BADLY
    print(f"job {t.job_id} Completed", file=out)
    print(await download_link(t), file=out)
    return OK


async def download_link(t: Target) -> str:
    """The export's presigned URL, else its id (exports may not be served yet: 501)."""
    headers = {"Authorization": f"Bearer {t.token}"}
    try:
        async with httpx.AsyncClient(base_url=t.api_url, timeout=10) as http:
            job = await http.get(f"/v1/renders/{t.job_id}", headers=headers)
            body = job.json() if job.status_code == 200 else {}
            export_id = body.get("export_id") or (body.get("export") or {}).get("id")
            if not export_id:
                return "export: (not recorded)"
            link = await http.get(f"/v1/exports/{export_id}/download-url", headers=headers)
            if link.status_code == 200 and link.json().get("url"):
                return f"download: {link.json()['url']}"
            return f"export: {export_id}"
    except (httpx.HTTPError, ValueError) as e:
        return f"export: (could not be looked up: {e})"


def run_watch(job_id: UUID, api: str | None, token: str | None, state_dir: Path) -> int:
    t = target(job_id, api, token, state_dir)
    return trio.run(lambda: watch(t, sys.stdout, sys.stderr, tty=sys.stdout.isatty()))
