"""``flatrender status``: the fleet and the queue in the terminal, from the API (issue 11).

Read with an admin (or service) token: the nodes (``GET /v1/nodes``), the jobs of every user by
step (``GET /v1/renders?scope=all`` per step; only ``meta.total`` is read, and the first page of
the active steps) and, for every job in Preparing, Rendering or Merging or held by a node, its
detail and ``/progress``. Exit status: 0 shown, 2 refused (401/403), 3 unreachable, 4 the API
answered an error.

:func:`summarize` turns the API's JSON into the rows shown, without I/O; :func:`draw` prints
them with ``rich``; :func:`fetch` is the only part that talks to the API.
"""

from __future__ import annotations

import json
import sys
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, TextIO

import attrs
import httpx
import trio
from rich.console import Console
from rich.table import Table

OK, REFUSED, UNREACHABLE, API_ERROR = 0, 2, 3, 4
NODE_STATUSES = ("Idle", "Busy", "Offline", "Maintenance", "Quarantined", "Updating")
STEPS = ("Queued", "Preparing", "Rendering", "Merging", "Completed", "Failed", "Cancelled")
ACTIVE_STEPS = ("Preparing", "Rendering", "Merging")
ACTIVE_PAGE_SIZE = 100  # running jobs shown per step (the newest); nodes' jobs come on top
TIMEOUT_SEC = 10.0
WIDE_COLUMNS = 120  # narrower: running jobs without their name and progress bar

Json = dict[str, Any]


# ------------------------------------------------------------------ where and who


def dev_defaults(state_dir: Path) -> Json:
    """``<state_dir>/dev.json`` (written by ``flatrender dev``), or nothing."""
    path = state_dir / "dev.json"
    return dict(json.loads(path.read_text())) if path.exists() else {}


def api_base(api: str | None, dev: Mapping[str, Any]) -> str:
    """``http(s)://host:port`` without ``/v1``: the option, else dev.json's, else :8080."""
    base = api or dev.get("api_url") or "http://127.0.0.1:8080"
    return str(base).rstrip("/").removesuffix("/v1")


class Refused(Exception):
    """401 or 403: the token does not open this."""


class ApiFailed(Exception):
    """Any other error answer; the message is the API's own."""


def error_text(response: httpx.Response) -> str:
    """``message (code)`` from the error body, with a 422's fields; the status line otherwise."""
    try:
        error = response.json()["error"]
        text = f"{error['message']} ({error['code']})"
    except (ValueError, KeyError, TypeError):
        return f"HTTP {response.status_code} {response.reason_phrase}"
    errors = (error.get("details") or {}).get("errors") or []
    fields = [f"{e.get('field')}: {e.get('message')}" for e in errors if isinstance(e, dict)]
    return "; ".join([text, *(f for f in fields if f not in text)])


async def get_json(http: httpx.AsyncClient, path: str, **params: Any) -> Json:
    response = await http.get(path, params=params)
    if response.status_code in (401, 403):
        raise Refused(error_text(response))
    if response.status_code != 200:
        raise ApiFailed(f"GET {path}: {error_text(response)}")
    return dict(response.json())


# ------------------------------------------------------------------ the pure part


@attrs.frozen
class RegionRow:
    region: str
    nodes: int
    idle: int
    busy: int
    offline: int
    other: int  # Maintenance, Quarantined, Updating


@attrs.frozen
class RunningRow:
    job_id: str
    name: str
    step: str
    frames_done: int
    total_frames: int
    percent: int
    active_nodes: int


@attrs.frozen
class Summary:
    nodes_by_status: list[tuple[str, int]]
    nodes_by_region: list[RegionRow]
    jobs_by_step: list[tuple[str, int]]
    running: list[RunningRow]


def summarize(
    nodes: Sequence[Json],
    step_totals: Mapping[str, int],
    details: Mapping[str, Json],
    progress: Mapping[str, Json],
) -> Summary:
    """The rows shown. ``details`` and ``progress`` are keyed by job id (``GET
    /v1/renders/{id}`` and ``.../progress``); a job missing from either is left out."""
    by_status = Counter(str(n.get("status")) for n in nodes)
    statuses = [*NODE_STATUSES, *sorted(set(by_status) - set(NODE_STATUSES))]
    regions: dict[str, Counter[str]] = {}
    for n in nodes:
        regions.setdefault(str(n.get("region") or "-"), Counter())[str(n.get("status"))] += 1
    region_rows = [
        RegionRow(
            region,
            sum(c.values()),
            c["Idle"],
            c["Busy"],
            c["Offline"],
            sum(c.values()) - c["Idle"] - c["Busy"] - c["Offline"],
        )
        for region, c in sorted(regions.items())
    ]
    running = [
        _running_row(job_id, details[job_id], progress[job_id])
        for job_id in details
        if job_id in progress
    ]
    running.sort(key=lambda r: ACTIVE_STEPS.index(r.step) if r.step in ACTIVE_STEPS else 9)
    return Summary(
        nodes_by_status=[(s, by_status[s]) for s in statuses],
        nodes_by_region=region_rows,
        jobs_by_step=[(s, int(step_totals.get(s, 0))) for s in STEPS],
        running=running,
    )


def _running_row(job_id: str, detail: Json, p: Json) -> RunningRow:
    ranges = [f for f in detail.get("frame_jobs") or [] if f.get("status") != "Failed"]
    done = sum(max(_int(f, "frames_rendered"), _int(f, "frames_validated")) for f in ranges)
    return RunningRow(
        job_id=job_id,
        name=str(detail.get("name") or ""),
        step=str(p.get("step")),
        frames_done=done,
        total_frames=int(p.get("total_frames") or 0),
        percent=int(p.get("progress") or 0),
        active_nodes=int(p.get("active_nodes") or 0),
    )


def _int(data: Json, key: str) -> int:
    return int(data.get(key) or 0)


def running_job_ids(nodes: Sequence[Json], active_jobs: Sequence[Json]) -> list[str]:
    """The jobs to follow: those nodes hold, then the listed active ones; each once."""
    ids = [str(n["current_job_id"]) for n in nodes if n.get("current_job_id")]
    ids += [str(j["id"]) for j in active_jobs]
    return list(dict.fromkeys(ids))


# ------------------------------------------------------------------ drawing


def draw(summary: Summary, console: Console, *, title: str) -> None:
    console.print(f"[bold]{title}[/bold]")
    total_nodes = sum(count for _, count in summary.nodes_by_status)
    console.print(_pairs(f"Nodes ({total_nodes})", "status", summary.nodes_by_status))
    regions = Table(title="Nodes by region", title_justify="left")
    for column in ("region", "nodes", "Idle", "Busy", "Offline", "other"):
        regions.add_column(column, justify="left" if column == "region" else "right")
    for r in summary.nodes_by_region:
        regions.add_row(r.region, *(str(v) for v in (r.nodes, r.idle, r.busy, r.offline, r.other)))
    console.print(regions)
    console.print(_pairs("Jobs by step", "step", summary.jobs_by_step))
    wide = console.width >= WIDE_COLUMNS
    running = Table(title=f"Running jobs ({len(summary.running)})", title_justify="left")
    running.add_column("job", no_wrap=True, min_width=36)  # whole: it is what `watch` takes
    if wide:
        running.add_column("name", overflow="ellipsis", max_width=30)
    running.add_column("step", no_wrap=True)
    running.add_column("frames", justify="right", no_wrap=True)
    running.add_column("progress" if wide else "done", no_wrap=True)
    running.add_column("nodes", justify="right", no_wrap=True, min_width=5)
    for j in summary.running:
        frames, percent = f"{j.frames_done}/{j.total_frames}", f"{j.percent:3d}%"
        if wide:
            cells = [j.job_id, j.name, j.step, frames, f"{_bar(j.percent)} {percent}"]
        else:
            cells = [j.job_id, j.step, frames, percent]
        running.add_row(*cells, str(j.active_nodes))
    console.print(running)


def _pairs(title: str, what: str, rows: Sequence[tuple[str, int]]) -> Table:
    table = Table(title=title, title_justify="left")
    table.add_column(what)
    table.add_column("count", justify="right")
    for name, count in rows:
        table.add_row(name, str(count), style=None if count else "dim")
    return table


def _bar(percent: int, width: int = 20) -> str:
    filled = width * max(0, min(percent, 100)) // 100
    return "█" * filled + "░" * (width - filled)


# ------------------------------------------------------------------ I/O


async def fetch(api: str, token: str) -> Summary:
    """Everything :func:`summarize` needs, read from the API; raises :class:`Refused`,
    :class:`ApiFailed` or ``httpx.TransportError``."""
    headers = {"Authorization": f"Bearer {token}"}
    async with httpx.AsyncClient(base_url=api, headers=headers, timeout=TIMEOUT_SEC) as http:
        nodes = (await get_json(http, "/v1/nodes"))["data"]
        totals: dict[str, int] = {}
        active: list[Json] = []
        for step in STEPS:
            size = ACTIVE_PAGE_SIZE if step in ACTIVE_STEPS else 1
            page = await get_json(http, "/v1/renders", scope="all", status=step, page_size=size)
            totals[step] = int(page["meta"]["total"])
            if step in ACTIVE_STEPS:
                active += page["data"]
        details: dict[str, Json] = {}
        progress: dict[str, Json] = {}
        for job_id in running_job_ids(nodes, active):
            try:
                details[job_id] = await get_json(http, f"/v1/renders/{job_id}")
                progress[job_id] = await get_json(http, f"/v1/renders/{job_id}/progress")
            except ApiFailed:
                continue  # a snapshot job (not listed here) or one gone meanwhile
    return summarize(nodes, totals, details, progress)


async def show(api: str, token: str, console: Console, err: TextIO, *, every: float | None) -> int:
    """Draw once, or every ``every`` seconds until interrupted."""
    while True:
        try:
            summary = await fetch(api, token)
        except Refused as e:
            print(f"flatrender status: refused: {e}", file=err)
            return REFUSED
        except ApiFailed as e:
            print(f"flatrender status: {e}", file=err)
            return API_ERROR
        except httpx.TransportError as e:
            print(f"flatrender status: cannot reach {api}: {e or type(e).__name__}", file=err)
            return UNREACHABLE
        if every is not None:
            console.clear()
        draw(summary, console, title=f"FlatRender at {api}")
        if every is None:
            return OK
        await trio.sleep(every)


def run_status(api: str | None, token: str | None, state_dir: Path, every: float | None) -> int:
    dev = dev_defaults(state_dir)
    base = api_base(api, dev)
    chosen = token or str(dev.get("admin_token") or "")
    console = Console()
    return trio.run(lambda: show(base, chosen, console, sys.stderr, every=every))
