"""Real agents in subprocesses against a real daemon, PostgreSQL and S3 (issue 3).

Agents come online and go Idle; one agent process is killed and its node is Offline within
heartbeat_timeout + 1 s, while the others stay Idle. Real time here, by design: the mock-clock
tests in tests/actors/test_node_actor.py pin the deadline itself.
"""

from __future__ import annotations

import signal
from pathlib import Path

import attrs
import httpx
import pytest
import trio

from flatrender.config import Config
from flatrender.daemon import Daemon
from tests.e2e import agent, stop
from tests.helpers import bearer

TIMEOUT_SEC = 3


async def statuses(http: httpx.AsyncClient, token: str) -> dict[str, str]:
    nodes = (await http.get("/v1/nodes", headers=bearer(token))).json()["data"]
    return {n["name"]: n["status"] for n in nodes}


async def wait_for(
    http: httpx.AsyncClient, token: str, wanted: dict[str, str], within: float
) -> float:
    started = trio.current_time()
    with trio.fail_after(within):
        while True:
            seen = await statuses(http, token)
            if all(seen.get(name) == status for name, status in wanted.items()):
                return trio.current_time() - started
            await trio.sleep(0.05)


@pytest.mark.slow
async def test_agents_go_idle_and_a_killed_one_is_offline_within_timeout_plus_one_second(
    config: Config, tmp_path: Path
) -> None:
    config = attrs.evolve(
        config,
        http=attrs.evolve(config.http, port=0),
        nodes=attrs.evolve(
            config.nodes, heartbeat_interval_sec=1, heartbeat_timeout_sec=TIMEOUT_SEC
        ),
    )
    token = config.auth.service_tokens[0]
    daemon = Daemon(config)
    async with trio.open_nursery() as nursery:
        await nursery.start(daemon.run)
        api = daemon.binds[0]
        steady = agent(api, token, "steady", tmp_path / "steady.log", nodes=2)
        doomed = agent(api, token, "doomed", tmp_path / "doomed.log")
        try:
            async with httpx.AsyncClient(base_url=api) as http:
                everyone = {"steady-1": "Idle", "steady-2": "Idle", "doomed-1": "Idle"}
                await wait_for(http, token, everyone, within=30)
                doomed.send_signal(signal.SIGKILL)
                doomed.wait()
                took = await wait_for(http, token, {"doomed-1": "Offline"}, within=TIMEOUT_SEC + 5)
                assert took <= TIMEOUT_SEC + 1
                seen = await statuses(http, token)
                assert seen["steady-1"] == seen["steady-2"] == "Idle"
        finally:
            stop([steady, doomed])
        daemon.stop()
