"""A routine restart mid-render (issue 11, DESIGN §8): SIGTERM, start again, agents running on.

The job completes with every range at attempt 1: nothing was requeued on the way out (node
deadlines are frozen once shutdown begins) nor on the way in (every node gets a full heartbeat
timeout from the new daemon's readiness, and its next reports are accepted)."""

from __future__ import annotations

import signal
import time
from pathlib import Path

import pytest
import trio

from flatrender.config import Config
from flatrender.persistence.db import Database
from tests.test_render_recovery import (
    CREDIT,
    _some_validated_some_rendering,
    farm,
    ledger_of,
    open_ranges,
    terminal,
)


@pytest.mark.slow
async def test_sigterm_restart_mid_render_requeues_nothing_and_the_job_completes(
    config: Config, db: Database, tmp_path: Path
) -> None:
    frames = 480
    async with farm(config, tmp_path, frames) as f:
        f.start_agent("a")
        f.start_agent("b")
        await f.wait_idle({"a-1", "b-1"})
        job = await f.submit()
        path = f"/v1/renders/{job['id']}"
        seen = await f.poll(path, _some_validated_some_rendering, 60)
        assert not terminal(seen)
        assert f.daemon is not None
        began = time.monotonic()
        f.daemon.send_signal(signal.SIGTERM)
        assert await trio.to_thread.run_sync(f.daemon.wait, 20) == 0
        assert time.monotonic() - began < 3.0  # grace_sec; nothing was in flight long
        await f.start_daemon()

        final = await f.poll(path, terminal, 90)
        assert final["step"] == "Completed", final
        assert [x["attempt"] for x in final["frame_jobs"]] == [1] * len(final["frame_jobs"])
        assert all(x["status"] == "Validated" for x in final["frame_jobs"])
        assert await f.export_frames(final) == list(range(frames))
        assert await open_ranges(db, job["id"]) == 0
        log = f.daemon_log()
        assert "lost its work" not in log
        assert "requeueing" not in log
        # Charged once, never refunded.
        assert await ledger_of(db, job["id"]) == [("charge", -job["paid_price_minor"])]
        assert await f.balance() == CREDIT - job["paid_price_minor"]
