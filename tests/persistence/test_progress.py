"""A finished job's progress from PostgreSQL: two light queries, the same as its whole state
would give, and what the poll and the WebSocket both send (DESIGN §5)."""

from __future__ import annotations

import json
from typing import Any, cast
from uuid import UUID, uuid4

import trio

from flatrender.http.common import AppState
from flatrender.persistence import progress as stored
from flatrender.persistence.db import Database
from tests.helpers import Tokens, bearer
from tests.http.test_ws import a_job, closed_with


class Counting:
    """The database, counting the queries made through it."""

    def __init__(self, db: Database) -> None:
        self.db = db
        self.queries: list[str] = []

    def __getattr__(self, name: str) -> Any:
        method = getattr(self.db, name)
        if name not in ("execute", "fetch", "fetchrow", "fetchval"):
            return method

        async def counted(query: str, *args: Any) -> Any:
            self.queries.append(query)
            return await method(query, *args)

        return counted


RANGE = """
INSERT INTO frame_jobs (id, job_id, start_frame, end_frame, order_value, status, replaces_id)
VALUES ($1, $2, $3, $4, $5, $6, $7)
"""
REPORTS = """
INSERT INTO frame_reports (frame_job_id, frame_number, node_id)
SELECT $1, n, $2 FROM generate_series($3::int, $4::int) AS n
"""


async def a_finished_job_with_ranges(client: Any, db: Database, tokens: Tokens) -> UUID:
    """Cancelled with a reason, over 300 frames: a validated range (half its frames reported),
    a failed range with reports and its replacement part-rendered, and one never started."""
    job_id = UUID(await a_job(client, db, tokens))
    cancel = await client.post(f"/v1/renders/{job_id}/cancel", headers=bearer(tokens.user))
    assert cancel.status_code == 200
    validated, failed, replacement, pending = uuid4(), uuid4(), uuid4(), uuid4()
    node = uuid4()
    for id_, start, end, order, status, replaces in (
        (validated, 0, 99, 0, "Validated", None),
        (failed, 100, 199, 1, "Failed", None),
        (replacement, 100, 199, 2, "Rendering", failed),
        (pending, 200, 299, 3, "Pending", None),
    ):
        await db.execute(RANGE, id_, job_id, start, end, order, status, replaces)
    await db.execute(REPORTS, validated, node, 0, 49)
    await db.execute(REPORTS, failed, node, 100, 180)  # no longer counts
    await db.execute(REPORTS, replacement, node, 100, 137)
    return job_id


async def test_a_finished_jobs_progress_takes_two_queries_and_equals_its_whole_state(
    client: Any, db: Database, tokens: Tokens
) -> None:
    job_id = await a_finished_job_with_ranges(client, db, tokens)
    now = trio.current_time()
    for step, reason, failure in (
        ("Cancelled", "operator", None),
        ("Failed", None, "the render failed"),
        ("Completed", None, None),
    ):
        await db.execute(
            "UPDATE render_jobs SET step = $2, cancel_reason = $3, failed_message = $4,"
            " image_preview_b64 = 'preview' WHERE id = $1",
            job_id,
            step,
            reason,
            failure,
        )
        counting = Counting(db)
        light = await stored.load(cast(Database, counting), job_id)
        whole = await stored.load_whole(db, job_id)
        assert light is not None and whole is not None
        assert light.seed is None and len(counting.queries) <= 2
        assert light.progress(now) == whole.progress(now)
        progress = light.progress(now)
        assert (progress.step, progress.current_frame, progress.preview_b64) == (
            step,
            137,
            "preview",
        )
        assert progress.message == (reason or failure)
    assert progress.progress == 100
    assert await stored.load(db, uuid4()) is None


async def test_the_poll_and_the_websocket_agree_on_a_finished_job_from_storage(
    client: Any, db: Database, tokens: Tokens, app_state: AppState
) -> None:
    job_id = await a_finished_job_with_ranges(client, db, tokens)
    assert app_state.actors is not None
    hub = app_state.actors.hub
    with trio.fail_after(5):
        while job_id not in hub._finished:  # its final flush  # noqa: ASYNC110
            await trio.sleep(0.05)
    hub._finished.clear()  # long finished: the hub has forgotten it
    path = f"/ws/v1/render/{job_id}"
    messages, code = await closed_with(client, path, headers=bearer(tokens.user))
    polled = await client.get(f"/v1/renders/{job_id}/progress", headers=bearer(tokens.user))
    assert code == 1000
    assert messages == [await polled.get_json()]
    # 50 validated frames count whole (100), 38 of the replacement: 138 of 300.
    assert messages[0]["step"] == "Cancelled" and messages[0]["progress"] == 46
    assert json.dumps(messages[0])  # plain JSON
