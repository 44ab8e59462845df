"""`flatrender dev` comes up from nothing, writes dev.json, answers, stops, and reuses its data."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from flatrender import devmode
from flatrender.config import Config
from tests.helpers import bearer
from tests.test_daemon import free_port

DEV_FIELDS = {
    "api_url",
    "ws_url",
    "admin_token",
    "user_token",
    "user_id",
    "service_token",
    "node_master_key",
    "s3_endpoint",
    "s3_access_key",
    "s3_secret_key",
    "s3_bucket",
    "database_url",
}


def start_dev(state_dir: Path, port: int) -> subprocess.Popen[bytes]:
    (state_dir / "dev.json").unlink(missing_ok=True)
    log = (state_dir.parent / f"dev-{port}.log").open("ab")
    return subprocess.Popen(
        [sys.executable, "-m", "flatrender.cli", "dev", "--state-dir", str(state_dir)]
        + ["--port", str(port), "--nodes", "2"],
        stderr=log,
        stdout=log,
    )


def wait_dev_json(state_dir: Path, proc: subprocess.Popen[bytes]) -> dict[str, str]:
    deadline = time.monotonic() + 60
    path = state_dir / "dev.json"
    while time.monotonic() < deadline:
        assert proc.poll() is None, "flatrender dev exited early"
        if path.exists():
            return dict(json.loads(path.read_text()))
        time.sleep(0.1)
    raise AssertionError("dev.json never appeared")


def wait_idle_nodes(api: str, token: str, count: int) -> set[str]:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        nodes = httpx.get(f"{api}/nodes", headers=bearer(token)).json()["data"]
        if len(nodes) == count and all(n["status"] == "Idle" for n in nodes):
            return {n["id"] for n in nodes}
        time.sleep(0.1)
    raise AssertionError(f"expected {count} idle nodes, saw {nodes}")


def stop(proc: subprocess.Popen[bytes]) -> int:
    proc.send_signal(signal.SIGINT)
    try:
        return proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()


@pytest.mark.slow
def test_dev_comes_up_answers_stops_and_reuses_its_data(tmp_path: Path) -> None:
    state_dir = tmp_path / "state"
    port = free_port()
    proc = start_dev(state_dir, port)
    try:
        info = wait_dev_json(state_dir, proc)
        assert set(info) >= DEV_FIELDS
        assert info["api_url"] == f"http://127.0.0.1:{port}/v1"
        api = info["api_url"]
        assert httpx.get(f"{api}/openapi.json").status_code == 200
        account = httpx.get(
            f"{api}/billing/accounts/{info['user_id']}", headers=bearer(info["service_token"])
        ).json()
        seeded = account["balance_minor"]
        assert seeded > 0
        projects = json.loads((state_dir / "dev.json").read_text())["demo_project_ids"]
        project = httpx.get(
            f"{api}/catalog/projects/{projects[0]}", headers=bearer(info["service_token"])
        ).json()
        assert project["owner_user_id"] == info["user_id"]
        # The user token is a working user JWT (the render list answers, not 401).
        assert httpx.get(f"{api}/renders", headers=bearer(info["user_token"])).status_code != 401
        first_nodes = wait_idle_nodes(api, info["admin_token"], 2)
    finally:
        assert stop(proc) == 0
    with pytest.raises(httpx.TransportError):
        httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1)

    proc = start_dev(state_dir, port)
    try:
        again = wait_dev_json(state_dir, proc)
        assert again["user_id"] == info["user_id"]
        assert again["service_token"] == info["service_token"]
        account = httpx.get(
            f"{again['api_url']}/billing/accounts/{info['user_id']}",
            headers=bearer(again["service_token"]),
        ).json()
        assert account["balance_minor"] == seeded  # seeded once, not twice
        # The simulated nodes are the same two, not two more.
        assert wait_idle_nodes(again["api_url"], again["admin_token"], 2) == first_nodes
    finally:
        assert stop(proc) == 0
    leftover = subprocess.run(
        ["pgrep", "-f", str(state_dir)], capture_output=True, text=True
    ).stdout.split()
    assert leftover == []


def test_dev_files_are_created_0600_and_appear_whole(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    opened: list[int] = []
    real_open = os.open

    def spy(path: Any, flags: int, mode: int = 0o777) -> int:
        opened.append(mode)
        return real_open(path, flags, mode)

    monkeypatch.setattr(os, "open", spy)
    old_umask = os.umask(0)  # nothing narrows the mode but the code itself
    try:
        leftover = tmp_path / ".dev.json.part"
        leftover.write_text("stale")
        leftover.chmod(0o644)
        devmode.write_private(tmp_path / "dev.json", '{"a": 1}')
        keys = devmode._secrets(tmp_path)
    finally:
        os.umask(old_umask)
    assert opened == [0o600, 0o600]
    for name in ("dev.json", "secrets.json"):
        assert (tmp_path / name).stat().st_mode & 0o777 == 0o600
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dev.json", "secrets.json"]
    # What dev generates passes serve's checks.
    Config.from_mapping(
        {
            "auth": {
                "jwt_secret": keys["jwt_secret"],
                "service_tokens": [keys["service_token"]],
                "node_master_key": keys["node_master_key"],
            }
        }
    )
