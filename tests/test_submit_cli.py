"""`flatrender submit` against a running daemon, as a new user after `make dev` would run it:
api, token and demo project from dev.json, the API's message on refusal, and --watch."""

from __future__ import annotations

import json
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from uuid import UUID, uuid4

import attrs
import httpx
import pytest
import trio

from flatrender.cli import _parser
from flatrender.config import Config
from flatrender.daemon import Daemon
from flatrender.http.auth import mint_token
from flatrender.submit_cli import REJECTED, demo_project, outcome
from tests.e2e import agent, fast_farm, people, poll, seed_project, stop
from tests.helpers import bearer

FRAMES = 60


@attrs.frozen
class Farm:
    api: str
    http: httpx.AsyncClient
    service: str
    user: UUID
    user_token: str
    project: UUID
    state_dir: Path


@pytest.fixture
async def farm(config: Config, tmp_path: Path, nursery: trio.Nursery) -> AsyncIterator[Farm]:
    """A daemon with one user owning a paid-for demo project, and the dev.json `flatrender dev`
    would have written for it."""
    config = fast_farm(config)
    service, user, user_token = people(config)
    daemon = Daemon(config)
    await nursery.start(daemon.run)
    api = daemon.binds[0]
    async with httpx.AsyncClient(base_url=api, timeout=10) as http:
        project = await seed_project(http, service, user, FRAMES)
        dev = {
            "api_url": f"{api}/v1",
            "ws_url": api.replace("http://", "ws://") + "/ws/v1",
            "user_token": user_token,
            "user_id": str(user),
            "demo_project_ids": [str(project), str(uuid4())],
        }
        (tmp_path / "dev.json").write_text(json.dumps(dev))
        yield Farm(api, http, service, user, user_token, project, tmp_path)
    daemon.stop()


async def run_submit(farm: Farm, *argv: str) -> tuple[int, str, str]:
    command = [sys.executable, "-m", "flatrender.cli", "submit", *argv]
    command += ["--state-dir", str(farm.state_dir)]
    done = await trio.run_process(command, capture_stdout=True, capture_stderr=True, check=False)
    return done.returncode, done.stdout.decode(), done.stderr.decode()


def test_the_command_is_wired() -> None:
    project = uuid4()
    args = _parser().parse_args(["submit", str(project), "--quality", "High", "--watch"])
    assert (args.project_id, args.quality, args.resolution, args.watch) == (
        project,
        "High",
        "HD",
        True,
    )
    assert _parser().parse_args(["submit", "--demo"]).demo


def test_the_demo_project_is_the_first_of_dev_json() -> None:
    first = uuid4()
    assert demo_project({"demo_project_ids": [str(first), str(uuid4())]}) == first


def test_refusals_of_the_token_exit_2_and_of_the_job_1() -> None:
    assert [outcome(s) for s in (401, 403, 402, 404, 422, 503)] == [2, 2, 1, 1, 1, 4]


@pytest.mark.slow
async def test_submit_demo_prints_the_job_id_and_price_and_creates_the_job(farm: Farm) -> None:
    status, out, err = await run_submit(farm, "--demo")
    assert status == 0, err
    words = out.split()
    assert words[0] == "job"
    job_id = words[1]
    job = await farm.http.get(f"/v1/renders/{job_id}", headers=bearer(farm.user_token))
    assert job.status_code == 200
    assert job.json()["saved_project_id"] == str(farm.project)
    assert job.json()["quality"] == "Low" and job.json()["resolution"] == "HD"
    assert f"price {job.json()['paid_price_minor']} " in out


@pytest.mark.slow
async def test_an_unknown_project_exits_1_with_the_apis_message(farm: Farm) -> None:
    unknown = uuid4()
    status, out, err = await run_submit(farm, str(unknown))
    assert status == REJECTED
    assert out == ""
    assert "project not found (not_found)" in err


@pytest.mark.slow
async def test_a_bad_quality_names_the_field(farm: Farm) -> None:
    status, _, err = await run_submit(farm, "--demo", "--quality", "Ultra")
    assert status == REJECTED
    assert "$.quality" in err


@pytest.mark.slow
async def test_a_short_balance_is_402_with_its_message(farm: Farm, config: Config) -> None:
    broke = uuid4()
    project = await seed_project(farm.http, farm.service, broke, FRAMES, credit=1)
    token = mint_token(config.auth.jwt_secret, broke)
    status, _, err = await run_submit(farm, str(project), "--token", token)
    assert status == REJECTED
    assert "(insufficient_balance)" in err


@pytest.mark.slow
async def test_submit_watch_follows_a_small_render_to_completed(farm: Farm, tmp_path: Path) -> None:
    procs: list[Any] = [agent(farm.api, farm.service, "sub", tmp_path / "sub.log", nodes=2)]
    try:
        await poll(
            farm.http,
            "/v1/nodes",
            farm.service,
            lambda b: sum(n["status"] == "Idle" for n in b["data"]) == 2,
            30,
        )
        with trio.fail_after(120):
            status, out, err = await run_submit(farm, "--demo", "--watch")
    finally:
        stop(procs)
    assert status == 0, out + err
    job_id = out.split()[1]
    assert f"job {job_id} Completed" in out
    assert "export: " in out or "download: " in out
