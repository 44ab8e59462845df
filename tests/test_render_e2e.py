"""A render end to end: real daemon, PostgreSQL, S3 and simulated agents in subprocesses.

Three nodes render one job; one node is killed mid-range and another's AfterFX crashes. The job
still completes, and the export holds every frame exactly once, in order (issue 4).
"""

from __future__ import annotations

import json
import signal
from pathlib import Path
from typing import Any

import attrs
import httpx
import pytest
import trio

from flatrender import media
from flatrender.config import Config
from flatrender.daemon import Daemon
from flatrender.storage import MinioStore
from tests.e2e import agent, fast_farm, people, poll, seed_project, stop
from tests.helpers import bearer
from tests.webhook import start_receiver

FRAMES = 240


@pytest.mark.slow
async def test_job_completes_exactly_despite_a_dead_node_and_a_crash(
    config: Config, tmp_path: Path
) -> None:
    config = fast_farm(config, max_chunk_frames=40)
    service, user, user_token = people(config)
    daemon = Daemon(config)
    procs: list[Any] = []
    async with trio.open_nursery() as nursery:
        await nursery.start(daemon.run)
        api = daemon.binds[0]
        async with httpx.AsyncClient(base_url=api, timeout=10) as http:
            project = await seed_project(http, service, user, FRAMES)
            try:
                procs.append(agent(api, service, "steady", tmp_path / "steady.log"))
                procs.append(
                    agent(
                        api,
                        service,
                        "crashy",
                        tmp_path / "crashy.log",
                        "--crash-rate",
                        "1",
                        "--seed",
                        "7",
                    )
                )
                doomed = agent(api, service, "doomed", tmp_path / "doomed.log")
                procs.append(doomed)
                nodes = await poll(
                    http,
                    "/v1/nodes",
                    service,
                    lambda b: sum(n["status"] == "Idle" for n in b["data"]) == 3,
                    30,
                )
                doomed_id = next(n["id"] for n in nodes["data"] if n["name"] == "doomed-1")

                submit = await http.post(
                    "/v1/renders",
                    json={"saved_project_id": str(project), "quality": "High", "resolution": "HD"},
                    headers=bearer(user_token),
                )
                assert submit.status_code == 201, submit.text
                job = submit.json()
                path = f"/v1/renders/{job['id']}"

                def doomed_is_rendering(body: dict[str, Any]) -> bool:
                    return any(
                        f.get("node_id") == doomed_id and f["status"] == "Rendering"
                        for f in body["frame_jobs"]
                    )

                await poll(http, path, user_token, doomed_is_rendering, 60)
                live = await http.get(f"{path}/progress", headers=bearer(user_token))
                assert live.status_code == 200, live.text
                now = live.json()
                assert now["step"] == "Rendering" and now["total_frames"] == FRAMES
                assert now["active_nodes"] >= 1 and 0 <= now["progress"] < 100
                doomed.send_signal(signal.SIGKILL)
                doomed.wait()

                final = await poll(
                    http,
                    path,
                    user_token,
                    lambda b: b["step"] in ("Completed", "Failed", "Cancelled"),
                    120,
                )
                assert final["step"] == "Completed", final
                assert final["export"] is not None
                done = (await http.get(f"{path}/progress", headers=bearer(user_token))).json()
                assert (done["step"], done["progress"], done["eta_seconds"]) == (
                    "Completed",
                    100,
                    None,
                )
                assert done["preview_b64"]  # a small PNG of a validated range
                assert final["repair_attempts"] >= 1  # the crashy node restarted AE at least once
                attempts = {f["attempt"] for f in final["frame_jobs"]}
                assert max(attempts) >= 2  # the dead node's range was rendered again

                store = MinioStore(config.s3)
                local = tmp_path / "export.mp4"
                await store.download_file(final["export"]["path"], local)
                assert media.probe_frame_count(local) == FRAMES
                assert media.decode_frame_signatures(local) == list(range(FRAMES))

                logs = (await http.get(f"{path}/logs", headers=bearer(user_token))).json()["logs"]
                text = "\n".join(line["message"] for line in logs)
                assert "requeued" in text and "crashed" in text

                account = (
                    await http.get(f"/v1/billing/accounts/{user}", headers=bearer(service))
                ).json()
                assert account["balance_minor"] == 100_000 - job["paid_price_minor"]
            finally:
                stop(procs)
        daemon.stop()


@pytest.mark.slow
async def test_a_late_idle_node_takes_the_unstarted_tail_of_a_long_range(
    config: Config, tmp_path: Path
) -> None:
    frames = 360
    config = fast_farm(config, max_chunk_frames=1000)
    service, user, user_token = people(config)
    procs: list[Any] = []
    async with trio.open_nursery() as nursery:
        webhook = await start_receiver(nursery)  # the user asked to be told when it is done
        config = attrs.evolve(config, notify=attrs.evolve(config.notify, webhook_url=webhook.url))
        daemon = Daemon(config)
        await nursery.start(daemon.run)
        api = daemon.binds[0]
        async with httpx.AsyncClient(base_url=api, timeout=10) as http:
            project = await seed_project(http, service, user, frames)
            try:
                procs.append(agent(api, service, "first", tmp_path / "first.log"))
                await poll(
                    http,
                    "/v1/nodes",
                    service,
                    lambda b: [n["status"] for n in b["data"]] == ["Idle"],
                    30,
                )
                submit = await http.post(
                    "/v1/renders",
                    json={
                        "saved_project_id": str(project),
                        "quality": "Low",
                        "resolution": "HD",
                        "tell_me_when_done": True,
                    },
                    headers=bearer(user_token),
                )
                path = f"/v1/renders/{submit.json()['id']}"
                await poll(
                    http,
                    path,
                    user_token,
                    lambda b: any(f["status"] == "Rendering" for f in b["frame_jobs"]),
                    30,
                )
                procs.append(agent(api, service, "late", tmp_path / "late.log"))
                final = await poll(
                    http,
                    path,
                    user_token,
                    lambda b: b["step"] in ("Completed", "Failed", "Cancelled"),
                    90,
                )
                assert final["step"] == "Completed", final
                done = [f for f in final["frame_jobs"] if f["status"] == "Validated"]
                assert len(done) >= 2  # the tail was rendered by the late node
                assert len({f["node_id"] for f in done}) == 2
                assert sum(f["end_frame"] - f["start_frame"] + 1 for f in done) == frames
                store = MinioStore(config.s3)
                local = tmp_path / "export.mp4"
                await store.download_file(final["export"]["path"], local)
                assert media.decode_frame_signatures(local) == list(range(frames))
                [hook] = await webhook.wait_for(1)
                told = json.loads(hook.body)
                assert (told["event"], told["job_id"]) == ("render.completed", final["id"])
                assert told["export_id"] == final["export"]["id"]
            finally:
                stop(procs)
                webhook.close()
        daemon.stop()
