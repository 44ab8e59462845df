"""`flatrender status`: the rows made from the API's JSON (no I/O), how they are drawn, and the
whole command against a daemon with agents rendering."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any
from uuid import uuid4

import httpx
import pytest
import trio
from rich.console import Console

from flatrender.cli import _parser
from flatrender.config import Config
from flatrender.daemon import Daemon
from flatrender.http.auth import mint_token
from flatrender.status_cli import (
    OK,
    REFUSED,
    UNREACHABLE,
    RegionRow,
    RunningRow,
    draw,
    error_text,
    running_job_ids,
    show,
    summarize,
)
from tests.e2e import agent, fast_farm, people, poll, seed_project, stop
from tests.helpers import bearer
from tests.test_daemon import free_port

JOB_A, JOB_B = str(uuid4()), str(uuid4())


def rows(text: str) -> list[list[str]]:
    """The body rows of every drawn table, as stripped cells."""
    return [[c.strip() for c in line.split("│")[1:-1]] for line in text.splitlines() if "│" in line]


def node(status: str, region: str, job: str | None = None) -> dict[str, Any]:
    return {"id": str(uuid4()), "status": status, "region": region, "current_job_id": job}


NODES = [
    node("Busy", "eu", JOB_A),
    node("Busy", "eu", JOB_A),
    node("Idle", "eu"),
    node("Offline", "us"),
    node("Maintenance", "us"),
]
DETAIL_A = {
    "name": "Intro",
    "frame_jobs": [
        {"status": "Validated", "frames_rendered": 40, "frames_validated": 40},
        {"status": "Rendering", "frames_rendered": 12, "frames_validated": 0},
        {"status": "Failed", "frames_rendered": 30, "frames_validated": 0},  # requeued whole
    ],
}
PROGRESS_A = {"step": "Rendering", "progress": 43, "total_frames": 120, "active_nodes": 2}


def test_nodes_by_status_keep_every_status_in_order_with_zeros() -> None:
    summary = summarize(NODES, {}, {}, {})
    assert summary.nodes_by_status == [
        ("Idle", 1),
        ("Busy", 2),
        ("Offline", 1),
        ("Maintenance", 1),
        ("Quarantined", 0),
        ("Updating", 0),
    ]


def test_nodes_by_region_count_idle_busy_offline_and_the_rest() -> None:
    assert summarize(NODES, {}, {}, {}).nodes_by_region == [
        RegionRow("eu", nodes=3, idle=1, busy=2, offline=0, other=0),
        RegionRow("us", nodes=2, idle=0, busy=0, offline=1, other=1),
    ]


def test_jobs_by_step_list_every_step_in_the_jobs_order() -> None:
    summary = summarize([], {"Rendering": 2, "Queued": 5}, {}, {})
    assert summary.jobs_by_step == [
        ("Queued", 5),
        ("Preparing", 0),
        ("Rendering", 2),
        ("Merging", 0),
        ("Completed", 0),
        ("Failed", 0),
        ("Cancelled", 0),
    ]


def test_a_running_job_counts_the_frames_of_its_live_ranges() -> None:
    summary = summarize(NODES, {}, {JOB_A: DETAIL_A}, {JOB_A: PROGRESS_A})
    assert summary.running == [RunningRow(JOB_A, "Intro", "Rendering", 52, 120, 43, 2)]


def test_a_job_without_progress_is_left_out_and_steps_order_the_rest() -> None:
    merging = {"step": "Merging", "progress": 99, "total_frames": 60, "active_nodes": 0}
    preparing = {"step": "Preparing", "progress": 0, "total_frames": 60, "active_nodes": 1}
    gone = str(uuid4())
    details = {JOB_A: DETAIL_A, JOB_B: {"name": "B"}, gone: {"name": "gone"}}
    summary = summarize([], {}, details, {JOB_A: merging, JOB_B: preparing})
    assert [(r.job_id, r.step) for r in summary.running] == [
        (JOB_B, "Preparing"),
        (JOB_A, "Merging"),
    ]


def test_the_jobs_followed_are_the_nodes_then_the_listed_each_once() -> None:
    assert running_job_ids(NODES, [{"id": JOB_B}, {"id": JOB_A}]) == [JOB_A, JOB_B]


def test_drawn_tables_show_nodes_regions_steps_and_progress() -> None:
    out = io.StringIO()
    summary = summarize(NODES, {"Rendering": 1}, {JOB_A: DETAIL_A}, {JOB_A: PROGRESS_A})
    draw(summary, Console(file=out, width=160), title="FlatRender at http://h:1")
    text = out.getvalue()
    for expected in (
        "FlatRender at http://h:1",
        "Nodes (5)",
        "Nodes by region",
        "Jobs by step",
        "Running jobs (1)",
        JOB_A,
        "52/120",
        " 43%",
    ):
        assert expected in text, expected
    table = rows(text)
    assert ["Busy", "2"] in table and ["Quarantined", "0"] in table
    assert ["eu", "3", "1", "2", "0", "0"] in table
    assert ["Rendering", "1"] in table


def test_on_80_columns_the_running_jobs_keep_whole_ids_and_frames() -> None:
    out = io.StringIO()
    progress = {**PROGRESS_A, "progress": 100, "total_frames": 1200}
    summary = summarize(NODES, {}, {JOB_A: DETAIL_A}, {JOB_A: progress})
    draw(summary, Console(file=out, width=80), title="t")
    assert [JOB_A, "Rendering", "52/1200", "100%", "2"] in rows(out.getvalue())
    assert "…" not in out.getvalue()


def test_error_text_is_the_apis_message_with_the_fields() -> None:
    body = {
        "error": {
            "code": "validation_failed",
            "message": "the render job is invalid",
            "details": {"errors": [{"field": "$.quality", "message": "must be one of Low"}]},
        }
    }
    response = httpx.Response(422, json=body)
    assert error_text(response) == (
        "the render job is invalid (validation_failed); $.quality: must be one of Low"
    )
    assert error_text(httpx.Response(502, text="<html>")) == "HTTP 502 Bad Gateway"


def test_the_command_is_wired() -> None:
    args = _parser().parse_args(["status", "--api", "http://h:1", "--token", "t", "--watch", "2"])
    assert (args.api, args.token, args.watch) == ("http://h:1", "t", 2.0)


@pytest.mark.slow
async def test_status_lists_the_nodes_and_the_running_job(config: Config, tmp_path: Path) -> None:
    config = fast_farm(config)
    service, user, user_token = people(config)
    admin = mint_token(config.auth.jwt_secret, uuid4(), role="admin")
    daemon = Daemon(config)
    procs: list[Any] = []
    async with trio.open_nursery() as nursery:
        await nursery.start(daemon.run)
        api = daemon.binds[0]
        async with httpx.AsyncClient(base_url=api, timeout=10) as http:
            project = await seed_project(http, service, user, 1800, credit=10_000_000)
            try:
                procs.append(agent(api, service, "st", tmp_path / "st.log", nodes=2))
                await poll(
                    http,
                    "/v1/nodes",
                    service,
                    lambda b: sum(n["status"] == "Idle" for n in b["data"]) == 2,
                    30,
                )
                submitted = await http.post(
                    "/v1/renders",
                    json={"saved_project_id": str(project), "quality": "Low", "resolution": "HD"},
                    headers=bearer(user_token),
                )
                assert submitted.status_code == 201, submitted.text
                job_id = submitted.json()["id"]
                await poll(
                    http,
                    "/v1/nodes",
                    service,
                    lambda b: any(n["current_job_id"] == job_id for n in b["data"]),
                    60,
                )
                out, err = io.StringIO(), io.StringIO()
                console = Console(file=out, width=200)
                assert await show(api, admin, console, err, every=None) == OK, err.getvalue()

                refused = io.StringIO()
                assert await show(api, user_token, console, refused, every=None) == REFUSED
                unreachable = io.StringIO()
                closed = f"http://127.0.0.1:{free_port()}"
                assert await show(closed, admin, console, unreachable, every=None) == UNREACHABLE
                cancel = await http.post(f"/v1/renders/{job_id}/cancel", headers=bearer(user_token))
                assert cancel.status_code == 200
            finally:
                stop(procs)
        daemon.stop()
    text = out.getvalue()
    assert "Nodes (2)" in text
    assert "Running jobs (1)" in text
    job_line = next(line for line in text.splitlines() if job_id in line)
    assert "Rendering" in job_line and "E2E 1800" in job_line and "/1800" in job_line
    counts = {cells[0]: int(cells[1]) for cells in rows(text) if len(cells) == 2}
    assert counts["Rendering"] == 1 and counts["Queued"] == 0  # the user's job, seen by an admin
    assert counts["Busy"] + counts["Idle"] == 2 and counts["Busy"] >= 1
    assert "refused" in refused.getvalue()
    assert "cannot reach" in unreachable.getvalue()
