"""What the job actors publish into the ProgressHub: render jobs only (snapshots are not served
live, by WebSocket or poll, and would evict render jobs from the hub's finished-job memory)."""

from __future__ import annotations

from typing import Any
from uuid import UUID

import trio

from flatrender.actors import job
from flatrender.http.common import AppState
from flatrender.persistence import ledger
from flatrender.persistence.db import Database
from tests.helpers import Tokens, bearer
from tests.http.test_snapshots import ask, make_project


async def test_a_snapshot_job_publishes_nothing_into_the_hub(
    client: Any, db: Database, tokens: Tokens, app_state: AppState
) -> None:
    assert app_state.actors is not None
    actors = app_state.actors
    hub = actors.hub
    project = await make_project(db, tokens.user_id)
    await ledger.credit(db, tokens.user_id, 1000)
    response = await client.post("/v1/snapshots", json=ask(project), headers=bearer(tokens.user))
    assert response.status_code == 202
    sid = UUID((await response.get_json())["snapshot_id"])
    # Its actor starts, moves it to Preparing (no node), and an operator ends it: three commits.
    await actors.jobs.call(sid, lambda reply: job.Cancel("operator", reply))
    step = await db.fetchval("SELECT step FROM render_jobs WHERE id = $1", sid)
    assert step == "Cancelled"
    await trio.sleep(0.2)  # past a flush interval, should anything be pending
    assert hub.current(sid) is None
    stats = hub.statistics()
    assert (stats.topics, stats.published) == (0, 0)
