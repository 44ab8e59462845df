"""A routine restart mid-render (issue 11, DESIGN §8): SIGTERM, start again, agents running on.

The job completes with every range at attempt 1: nothing was requeued on the way out (node
deadlines are frozen once shutdown begins) nor on the way in (every node gets a full heartbeat
timeout from the new daemon's readiness, and its next reports are accepted)."""

from __future__ import annotations

import signal
import socket
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
        # A request still in flight (its body half sent) holds the drain for all of grace_sec
        # (3 s, as long as the heartbeat timeout): the nodes' deadlines pass meanwhile.
        with socket.create_connection(("127.0.0.1", f.port)) as slow:
            slow.sendall(
                b"POST /v1/renders HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                b"Authorization: Bearer " + f.user_token.encode() + b"\r\n"
                b"Content-Length: 1000\r\n\r\n{"
            )
            await trio.sleep(0.2)
            began = time.monotonic()
            f.daemon.send_signal(signal.SIGTERM)
            assert await trio.to_thread.run_sync(f.daemon.wait, 20) == 0
            assert time.monotonic() - began < 3.0 + 2
        # The new daemon gives every node a full timeout from its readiness; the agents, backing
        # off while it was down (up to ~8 s here), need longer than 3 s to be heard again.
        f.toml_extra = f.toml_extra.replace(
            "heartbeat_timeout_sec = 3", "heartbeat_timeout_sec = 10"
        )
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
