"""Live progress over real sockets: a running daemon, simulated agents rendering, trio-websocket
watchers and the `flatrender watch` command (issue 6)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import attrs
import httpx
import pytest
import trio
from trio_websocket import ConnectionClosed, open_websocket_url

from flatrender.config import Config
from flatrender.daemon import Daemon
from tests.e2e import agent, fast_farm, people, poll, seed_project, stop
from tests.helpers import bearer

FRAMES = 240
ARRIVAL_JITTER_SEC = 0.25  # client-side arrival times jitter around the server's flushes
SHUTDOWN_CLOSE_SEC = 3.0


async def watch_ws(url: str, token: str) -> tuple[list[tuple[float, dict[str, Any]]], int | None]:
    """Every message with its arrival time, until the server closes; and the close code."""
    received: list[tuple[float, dict[str, Any]]] = []
    async with open_websocket_url(f"{url}?access_token={token}") as ws:
        while True:
            try:
                text = await ws.get_message()
            except ConnectionClosed as e:
                return received, None if e.reason is None else e.reason.code
            received.append((trio.current_time(), json.loads(text)))


async def run_watch_command(api: str, token: str, job_id: str, tmp: Path) -> tuple[int, str]:
    argv = [sys.executable, "-m", "flatrender.cli", "watch", job_id, "--api", api]
    argv += ["--token", token, "--state-dir", str(tmp)]
    done = await trio.run_process(argv, capture_stdout=True, stderr=subprocess.STDOUT, check=False)
    return done.returncode, done.stdout.decode()


async def submit(http: httpx.AsyncClient, token: str, project: Any) -> str:
    response = await http.post(
        "/v1/renders",
        json={"saved_project_id": str(project), "quality": "Low", "resolution": "HD"},
        headers=bearer(token),
    )
    assert response.status_code == 201, response.text
    return str(response.json()["id"])


@pytest.mark.slow
async def test_watchers_see_progress_rise_then_completed_and_1000(
    config: Config, tmp_path: Path
) -> None:
    config = fast_farm(config, max_chunk_frames=40)
    service, user, user_token = people(config)
    daemon = Daemon(config)
    procs: list[Any] = []
    async with trio.open_nursery() as nursery:
        await nursery.start(daemon.run)
        api = daemon.binds[0]
        ws_base = api.replace("http://", "ws://")
        async with httpx.AsyncClient(base_url=api, timeout=10) as http:
            project = await seed_project(http, service, user, FRAMES)
            try:
                procs.append(agent(api, service, "sim", tmp_path / "sim.log", nodes=3))
                await poll(
                    http,
                    "/v1/nodes",
                    service,
                    lambda b: sum(n["status"] == "Idle" for n in b["data"]) == 3,
                    30,
                )
                job_id = await submit(http, user_token, project)
                results: dict[str, Any] = {}

                async def socket_watcher() -> None:
                    url = f"{ws_base}/ws/v1/render/{job_id}"
                    results["ws"] = await watch_ws(url, user_token)

                async def command_watcher() -> None:
                    results["cli"] = await run_watch_command(api, user_token, job_id, tmp_path)

                with trio.fail_after(120):
                    async with trio.open_nursery() as watchers:
                        watchers.start_soon(socket_watcher)
                        watchers.start_soon(command_watcher)
            finally:
                stop(procs)
            messages, code = results["ws"]
            assert code == 1000
            steps = [m["step"] for _, m in messages]
            assert steps[-1] == "Completed" and steps.count("Completed") == 1
            rendering = [m for _, m in messages if m["step"] == "Rendering"]
            assert len(rendering) >= 3
            percents = [m["progress"] for _, m in messages]
            assert percents == sorted(percents) and percents[-1] == 100
            assert len({m["progress"] for m in rendering}) >= 3  # it rose while we watched
            assert any(m["active_nodes"] >= 2 for m in rendering)
            assert any(m["eta_seconds"] is not None for m in rendering)
            # At most 10 a second (the snapshot aside): no 11 messages within one second. These
            # are arrival times on the client, so allow for delivery jitter: without coalescing
            # a burst would arrive within milliseconds, far inside the margin.
            times = [t for t, _ in messages[1:]]
            spans = [b - a for a, b in zip(times, times[10:], strict=False)]
            assert all(span >= 1.0 - ARRIVAL_JITTER_SEC for span in spans), min(spans)
            final = (
                await http.get(f"/v1/renders/{job_id}/progress", headers=bearer(user_token))
            ).json()
            assert final == messages[-1][1]

            status, output = results["cli"]
            assert status == 0, output
            assert f"job {job_id} Completed" in output
            assert "export: " in output or "download: " in output
            assert "Rendering" in output
        daemon.stop()


@pytest.mark.slow
async def test_watch_exits_nonzero_on_cancel_and_shutdown_closes_1001_promptly(
    config: Config, tmp_path: Path
) -> None:
    config = fast_farm(config)
    # A graceful timeout well above the bound below, so a close that waited for it would fail.
    config = attrs.evolve(config, http=attrs.evolve(config.http, grace_sec=2 * SHUTDOWN_CLOSE_SEC))
    service, user, user_token = people(config)
    daemon = Daemon(config)
    async with trio.open_nursery() as nursery:
        await nursery.start(daemon.run)
        api = daemon.binds[0]
        ws_base = api.replace("http://", "ws://")
        async with httpx.AsyncClient(base_url=api, timeout=10) as http:
            project = await seed_project(http, service, user, 60)
            # No nodes: both jobs wait in Preparing for a node to build their replica.
            waiting = await submit(http, user_token, project)
            doomed = await submit(http, user_token, project)

            async def cancel_soon() -> None:
                assert daemon.app_state is not None and daemon.app_state.actors is not None
                hub = daemon.app_state.actors.hub
                while hub.statistics().subscribers < 1:  # the command is watching  # noqa: ASYNC110
                    await trio.sleep(0.1)
                cancel = await http.post(f"/v1/renders/{doomed}/cancel", headers=bearer(user_token))
                assert cancel.status_code == 200

            with trio.fail_after(60):
                async with trio.open_nursery() as inner:
                    inner.start_soon(cancel_soon)
                    status, output = await run_watch_command(api, user_token, doomed, tmp_path)
            assert status == 1, output
            assert f"job {doomed} Cancelled" in output
            assert "Preparing" in output

            closed: dict[str, Any] = {}

            async def watcher(*, task_status: trio.TaskStatus[None]) -> None:
                async with open_websocket_url(
                    f"{ws_base}/ws/v1/render/{waiting}",
                    extra_headers=[(b"Authorization", f"Bearer {user_token}".encode())],
                ) as ws:
                    assert json.loads(await ws.get_message())["step"] == "Preparing"
                    task_status.started()
                    try:
                        await ws.get_message()
                    except ConnectionClosed as e:
                        closed["code"] = None if e.reason is None else e.reason.code
                        closed["at"] = trio.current_time()

            async with trio.open_nursery() as inner:
                await inner.start(watcher)
                asked = trio.current_time()
                daemon.stop()
        assert closed["code"] == 1001
        # Without the hub's 1001 the close would wait for Hypercorn's graceful timeout (then a
        # 1006): well under it, with room for a loaded machine.
        assert closed["at"] - asked < SHUTDOWN_CLOSE_SEC


def test_the_daemon_asks_hypercorn_for_keepalive_pings(config: Config) -> None:
    assert Daemon(config)._hypercorn_config().websocket_ping_interval == 20.0
