"""A snapshot end to end: real daemon, PostgreSQL, S3 and a simulated agent in a subprocess.

The first request is a miss: a Snapshot job renders the one frame on the node, which uploads a
PNG; once validated the snapshot is Cached and its presigned url downloads that very frame. The
second identical request is answered from cache at once (issue 5).
"""

from __future__ import annotations

from datetime import datetime, timedelta
from pathlib import Path
from typing import Any
from uuid import UUID

import httpx
import pytest
import trio

from flatrender import media
from flatrender.agent import render
from flatrender.config import Config
from flatrender.daemon import Daemon
from flatrender.persistence.db import Database
from tests.e2e import agent, fast_farm, people, poll, seed_project, stop
from tests.helpers import bearer

FRAME = 17


@pytest.mark.slow
async def test_uncached_snapshot_is_rendered_by_a_node_then_answered_from_cache(
    config: Config, db: Database, tmp_path: Path
) -> None:
    config = fast_farm(config)
    service, user, user_token = people(config)
    daemon = Daemon(config)
    procs: list[Any] = []
    async with trio.open_nursery() as nursery:
        await nursery.start(daemon.run)
        api = daemon.binds[0]
        async with httpx.AsyncClient(base_url=api, timeout=10) as http:
            project = await seed_project(http, service, user, 60, credit=1)
            try:
                procs.append(agent(api, service, "snap", tmp_path / "snap.log"))
                await poll(
                    http,
                    "/v1/nodes",
                    service,
                    lambda b: [n["status"] for n in b["data"]] == ["Idle"],
                    30,
                )
                ask = {"saved_project_id": str(project), "scene_key": "all", "frame_number": FRAME}
                first = await http.post("/v1/snapshots", json=ask, headers=bearer(user_token))
                assert first.status_code == 202, first.text
                assert first.json()["status"] in ("Pending", "Rendering")
                assert first.json()["image_url"] is None
                sid = first.json()["snapshot_id"]

                done = await poll(
                    http,
                    f"/v1/snapshots/{sid}",
                    user_token,
                    lambda b: b["status"] in ("Cached", "Failed"),
                    60,
                )
                assert done["status"] == "Cached", done
                took = datetime.fromisoformat(done["completed_at"]) - datetime.fromisoformat(
                    done["requested_at"]
                )
                assert abs(done["duration_ms"] - took / timedelta(milliseconds=1)) <= 1
                assert done["duration_ms"] > 0
                image = await http.get(done["image_url"])
                assert image.status_code == 200
                local = tmp_path / "snapshot.png"
                local.write_bytes(image.content)
                info = media.probe_png(local)
                assert (info.width, info.height) == (done["width"], done["height"])
                # The size the simulated node renders this project at (its video frames too).
                assert (info.width, info.height) == (render.FRAME_WIDTH, render.FRAME_HEIGHT)
                assert media.decode_frame_signatures(local) == [FRAME]  # that very frame
                thumbnail = await http.get(done["thumbnail_url"])
                assert thumbnail.status_code == 200
                assert thumbnail.content.startswith(b"\x89PNG")

                job = await db.fetchrow(
                    "SELECT step, paid_price_minor FROM render_jobs WHERE id = $1", UUID(sid)
                )
                assert (job["step"], job["paid_price_minor"]) == ("Completed", 0)

                again = await http.post("/v1/snapshots", json=ask, headers=bearer(user_token))
                assert again.status_code == 202
                cached = again.json()
                assert (cached["snapshot_id"], cached["status"]) == (sid, "Cached")
                assert (await http.get(cached["image_url"])).content == image.content
                count = await db.fetchval("SELECT count(*) FROM render_jobs")
                assert count == 1  # the second answer rendered nothing
            finally:
                stop(procs)
        daemon.stop()
