"""Shared pieces of the end-to-end tests: agent processes, polling, a seeded project."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any
from uuid import UUID, uuid4

import attrs
import httpx
import trio

from flatrender.config import Config
from flatrender.http.auth import mint_token
from tests.helpers import bearer


def fast_farm(config: Config, *, max_chunk_frames: int = 40) -> Config:
    """A daemon on a free port that notices dead nodes in 3 s and splits jobs small."""
    return attrs.evolve(
        config,
        http=attrs.evolve(config.http, port=0),
        nodes=attrs.evolve(config.nodes, heartbeat_interval_sec=1, heartbeat_timeout_sec=3),
        jobs=attrs.evolve(config.jobs, min_chunk_frames=20, max_chunk_frames=max_chunk_frames),
    )


def people(config: Config) -> tuple[str, UUID, str]:
    """The service token, a new user and that user's JWT."""
    user = uuid4()
    return config.auth.service_tokens[0], user, mint_token(config.auth.jwt_secret, user)


def agent(
    api: str, token: str, prefix: str, log: Path, *extra: str, nodes: int = 1
) -> subprocess.Popen[bytes]:
    """A `flatrender agent` process of ``nodes`` nodes named ``<prefix>-<i>``, fast frames."""
    argv = [sys.executable, "-m", "flatrender.cli", "agent", "--api", api]
    argv += ["--admin-token", token, "--nodes", str(nodes), "--name-prefix", prefix]
    argv += ["--state-file", str(log.with_suffix(".json")), "--frame-time", "0.03"]
    argv += ["--ae-restart-delay", "0.1", *extra]
    return subprocess.Popen(argv, stdout=log.open("ab"), stderr=subprocess.STDOUT)


def stop(procs: list[subprocess.Popen[bytes]]) -> None:
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


async def poll(http: httpx.AsyncClient, path: str, token: str, done: Any, within: float) -> Any:
    """GET ``path`` until ``done(body)``; fails after ``within`` seconds."""
    with trio.fail_after(within):
        while True:
            body = (await http.get(path, headers=bearer(token))).json()
            if done(body):
                return body
            await trio.sleep(0.1)


async def seed_project(
    http: httpx.AsyncClient, service: str, owner: UUID, frames: int, credit: int = 100_000
) -> UUID:
    """A one-scene 30 fps demo project of ``frames`` frames, and money for its owner."""
    project = uuid4()
    spec = {
        "owner_user_id": str(owner),
        "name": f"E2E {frames}",
        "template_md5": project.hex,
        "template_url": f"demo://{project}",
        "ae_version": "2024",
        "frame_rate": 30,
        "total_frames": frames,
        "duration_sec": frames / 30,
        "scenes": [{"scene_key": "all", "start_frame": 0, "end_frame": frames - 1}],
    }
    put = await http.put(f"/v1/catalog/projects/{project}", json=spec, headers=bearer(service))
    assert put.status_code == 200, put.text
    paid = await http.post(
        f"/v1/billing/accounts/{owner}/credit",
        json={"amount_minor": credit},
        headers=bearer(service),
    )
    assert paid.status_code == 200, paid.text
    return project


TERMINAL = ("Completed", "Failed", "Cancelled")
