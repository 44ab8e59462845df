"""Render jobs that survive trouble, end to end (issue 4): a real ``flatrender serve`` process,
PostgreSQL, S3 and simulated agents in subprocesses.

- The daemon is SIGKILLed mid-job and started again on the same database: the job completes,
  its export holds every frame once and in order, and the money moved exactly once.
- A cancel refunds the share of frames not yet validated, exactly once, and stops the nodes.
- Lease fencing: a report for a range the node does not hold, or for a finished job, is 409.
- A Failed job (refunded in full) is retried as a new job, charged again, and completes.

Every wait polls with a deadline; the daemon runs as a process so it can be killed for real.
"""

from __future__ import annotations

import contextlib
import json
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any
from uuid import UUID, uuid4

import attrs
import httpx
import pytest
import trio

from flatrender import media
from flatrender.config import Config
from flatrender.domain.pricing import cancel_refund
from flatrender.domain.signing import node_secret
from flatrender.http.auth import mint_token
from flatrender.persistence.db import Database
from flatrender.storage import MinioStore
from tests.conftest import NODE_MASTER_KEY, SERVICE_TOKEN
from tests.helpers import bearer, signed_headers
from tests.test_daemon import FLATRENDER, config_toml, free_port

CREDIT = 100_000
TERMINAL = ("Completed", "Failed", "Cancelled")
OPEN = ("Assigned", "Rendering", "Rendered")
POLL_SEC = 0.05


@attrs.define
class Farm:
    """One daemon process (killable, restartable on the same port and database), its agents,
    a user with money and a project to render."""

    config: Config
    tmp: Path
    port: int
    toml_extra: str
    http: httpx.AsyncClient
    user_id: UUID = attrs.field(factory=uuid4)
    project_id: UUID = attrs.field(factory=uuid4)
    daemon: subprocess.Popen[bytes] | None = None
    starts: int = 0
    agents: dict[str, subprocess.Popen[bytes]] = attrs.Factory(dict)

    @property
    def api(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def user_token(self) -> str:
        return mint_token(self.config.auth.jwt_secret, self.user_id)

    # -- processes ------------------------------------------------------------------------

    def spawn_daemon(self) -> subprocess.Popen[bytes]:
        path = self.tmp / "flatrender.toml"
        path.write_text(config_toml(self.config, self.port, [SERVICE_TOKEN]) + self.toml_extra)
        self.starts += 1
        with (self.tmp / f"serve-{self.starts}.log").open("wb") as log:
            return subprocess.Popen(
                [*FLATRENDER, "serve", "--config", str(path)], stdout=log, stderr=subprocess.STDOUT
            )

    async def start_daemon(self) -> None:
        """Start ``flatrender serve`` on the farm's port and database; return once it answers."""
        self.daemon = daemon = self.spawn_daemon()
        with trio.fail_after(30):
            while True:
                assert daemon.poll() is None, self.daemon_log()
                with contextlib.suppress(httpx.TransportError):
                    if (await self.http.get("/healthz")).status_code == 200:
                        return
                await trio.sleep(POLL_SEC)

    def kill_daemon(self) -> None:
        assert self.daemon is not None
        self.daemon.send_signal(signal.SIGKILL)
        self.daemon.wait()

    def daemon_log(self) -> str:
        return "\n".join(p.read_text() for p in sorted(self.tmp.glob("serve-*.log")))

    def start_agent(self, prefix: str) -> None:
        """An agent process running one node, ``<prefix>-1`` (the same node when restarted)."""
        log = self.tmp / f"{prefix}.log"
        with log.open("ab") as out:
            self.agents[prefix] = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "flatrender.cli",
                    "agent",
                    "--api",
                    self.api,
                    "--admin-token",
                    SERVICE_TOKEN,
                    "--nodes",
                    "1",
                    "--name-prefix",
                    prefix,
                    "--state-file",
                    str(log.with_suffix(".json")),
                    "--frame-time",
                    "0.03",
                    "--ae-restart-delay",
                    "0.1",
                ],
                stdout=out,
                stderr=subprocess.STDOUT,
            )

    def signal_agents(self, signum: int) -> None:
        for proc in self.agents.values():
            proc.send_signal(signum)

    def kill_agent(self, prefix: str) -> None:
        proc = self.agents[prefix]
        proc.send_signal(signal.SIGKILL)
        proc.wait()

    def stop_all(self) -> None:
        for proc in [*self.agents.values(), self.daemon]:
            if proc is not None and proc.poll() is None:
                proc.kill()  # SIGKILL ends a stopped process too
                proc.wait()

    # -- HTTP -----------------------------------------------------------------------------

    async def get(self, path: str, token: str | None = None) -> Any:
        response = await self.http.get(path, headers=bearer(token or self.user_token))
        assert response.status_code == 200, response.text
        return response.json()

    async def poll(
        self, path: str, done: Callable[[Any], bool], within: float, token: str | None = None
    ) -> Any:
        with trio.fail_after(within):
            while True:
                body = await self.get(path, token)
                if done(body):
                    return body
                await trio.sleep(POLL_SEC)

    async def setup_account_and_project(self, frames: int) -> None:
        spec = {
            "owner_user_id": str(self.user_id),
            "name": "Recovery",
            "template_md5": "r" * 32,
            "template_url": "demo://recovery",
            "ae_version": "2024",
            "frame_rate": 30,
            "total_frames": frames,
            "duration_sec": frames / 30,
            "scenes": [{"scene_key": "all", "start_frame": 0, "end_frame": frames - 1}],
        }
        service = bearer(SERVICE_TOKEN)
        put = await self.http.put(
            f"/v1/catalog/projects/{self.project_id}", json=spec, headers=service
        )
        assert put.status_code == 200, put.text
        credit = await self.http.post(
            f"/v1/billing/accounts/{self.user_id}/credit",
            json={"amount_minor": CREDIT},
            headers=service,
        )
        assert credit.status_code == 200, credit.text

    async def wait_idle(self, names: set[str], within: float = 30) -> dict[str, str]:
        """Node ids by name once every named node is Idle."""

        def all_idle(body: Any) -> bool:
            seen = {n["name"]: n["status"] for n in body["data"]}
            return all(seen.get(name) == "Idle" for name in names)

        body = await self.poll("/v1/nodes", all_idle, within, SERVICE_TOKEN)
        return {n["name"]: n["id"] for n in body["data"] if n["name"] in names}

    async def submit(self) -> dict[str, Any]:
        response = await self.http.post(
            "/v1/renders",
            json={"saved_project_id": str(self.project_id), "quality": "High", "resolution": "HD"},
            headers=bearer(self.user_token),
        )
        assert response.status_code == 201, response.text
        job: dict[str, Any] = response.json()
        return job

    async def balance(self) -> int:
        body = await self.get(f"/v1/billing/accounts/{self.user_id}", SERVICE_TOKEN)
        return int(body["balance_minor"])

    async def export_frames(self, job: dict[str, Any]) -> list[int]:
        local = self.tmp / f"export-{job['id']}.mp4"
        await MinioStore(self.config.s3).download_file(job["export"]["path"], local)
        return media.decode_frame_signatures(local)

    async def node_post(self, node_id: str, path: str, body: dict[str, Any]) -> httpx.Response:
        raw = json.dumps(body).encode()
        secret = node_secret(NODE_MASTER_KEY, UUID(node_id))
        return await self.http.post(
            path, content=raw, headers=signed_headers(secret, "POST", path, raw)
        )


@contextlib.asynccontextmanager
async def farm(
    config: Config, tmp_path: Path, frames: int, *, max_attempts: int = 3
) -> AsyncIterator[Farm]:
    extra = f"""
[nodes]
heartbeat_interval_sec = 1
heartbeat_timeout_sec = 3
[jobs]
min_chunk_frames = 20
max_chunk_frames = 40
max_attempts = {max_attempts}
"""
    port = free_port()
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=10) as http:
        f = Farm(config, tmp_path, port, extra, http)
        try:
            await f.start_daemon()
            await f.setup_account_and_project(frames)
            yield f
        except BaseException:
            print(f.daemon_log()[-20_000:])
            raise
        finally:
            f.stop_all()


def terminal(body: dict[str, Any]) -> bool:
    return body["step"] in TERMINAL


def statuses(body: dict[str, Any]) -> list[str]:
    return [f["status"] for f in body["frame_jobs"]]


def early_ranges(body: dict[str, Any]) -> list[dict[str, Any]]:
    """Ranges being rendered with at most half their frames done: far from their last report
    (a poll interval is a few frames), so what a test does next finds them still unfinished."""
    return [
        x
        for x in body["frame_jobs"]
        if x["status"] == "Rendering"
        and x["frames_rendered"] <= (x["end_frame"] - x["start_frame"] + 1) // 2
    ]


# ------------------------------------------------------------------ database checks


async def ledger_of(db: Database, job_id: str) -> list[tuple[str, int]]:
    rows = await db.fetch(
        "SELECT kind, amount_minor FROM ledger_entries WHERE job_id = $1 ORDER BY id",
        UUID(job_id),
    )
    return [(r["kind"], int(r["amount_minor"])) for r in rows]


async def open_ranges(db: Database, job_id: str) -> int:
    return int(
        await db.fetchval(
            "SELECT count(*) FROM frame_jobs WHERE job_id = $1 AND status = ANY($2::text[])",
            UUID(job_id),
            list(OPEN),
        )
    )


# ------------------------------------------------------------------ 1. daemon SIGKILL


def _started_nothing_validated(body: dict[str, Any]) -> bool:
    return body["step"] != "Queued" and "Validated" not in statuses(body)


def _some_validated_some_rendering(body: dict[str, Any]) -> bool:
    return (
        body["step"] == "Rendering" and "Validated" in statuses(body) and bool(early_ranges(body))
    )


@pytest.mark.slow
@pytest.mark.parametrize(
    ("moment", "nodes_time_out"),
    [
        pytest.param(_started_nothing_validated, False, id="early"),
        pytest.param(_some_validated_some_rendering, False, id="mid-render"),
        pytest.param(_some_validated_some_rendering, True, id="mid-render-nodes-time-out"),
    ],
)
async def test_daemon_killed_mid_job_restarts_and_completes_exactly_once(
    config: Config,
    db: Database,
    tmp_path: Path,
    moment: Callable[[dict[str, Any]], bool],
    nodes_time_out: bool,
) -> None:
    """``nodes-time-out``: the agents stay silent across the restart until the new daemon has
    declared them Offline, so the ranges they held are requeued and their late reports fenced."""
    frames = 240
    async with farm(config, tmp_path, frames) as f:
        f.start_agent("a")
        f.start_agent("b")
        nodes = await f.wait_idle({"a-1", "b-1"})
        job = await f.submit()
        path = f"/v1/renders/{job['id']}"
        seen = await f.poll(path, moment, 60)
        assert not terminal(seen)
        f.kill_daemon()
        if nodes_time_out:
            f.signal_agents(signal.SIGSTOP)
        await f.start_daemon()
        if nodes_time_out:

            def all_offline(body: Any) -> bool:
                return all(
                    n["status"] == "Offline" for n in body["data"] if n["id"] in nodes.values()
                )

            await f.poll("/v1/nodes", all_offline, 15, SERVICE_TOKEN)
            f.signal_agents(signal.SIGCONT)

        final = await f.poll(path, terminal, 60)
        assert final["step"] == "Completed", final
        assert await f.export_frames(final) == list(range(frames))
        # The current ranges tile the job once; nothing is left held by a node.
        assert all(x["status"] in ("Validated", "Failed") for x in final["frame_jobs"])
        current = sorted(
            (x["start_frame"], x["end_frame"])
            for x in final["frame_jobs"]
            if x["status"] == "Validated"
        )
        assert current[0][0] == 0 and current[-1][1] == frames - 1
        assert all(a[1] + 1 == b[0] for a, b in zip(current, current[1:], strict=False))
        assert await open_ranges(db, job["id"]) == 0
        if nodes_time_out:  # what the silent nodes held was rendered again
            assert max(x["attempt"] for x in final["frame_jobs"]) >= 2
        # Charged once, never refunded.
        assert await ledger_of(db, job["id"]) == [("charge", -job["paid_price_minor"])]
        assert await f.balance() == CREDIT - job["paid_price_minor"]
        # Both nodes come back to Idle on the restarted daemon.
        await f.wait_idle(set(nodes))


# ------------------------------------------------------------------ 2. cancel


@pytest.mark.slow
async def test_cancel_refunds_the_unrendered_share_exactly_once_and_stops_the_nodes(
    config: Config, db: Database, tmp_path: Path
) -> None:
    frames = 480
    async with farm(config, tmp_path, frames) as f:
        f.start_agent("a")
        f.start_agent("b")
        nodes = await f.wait_idle({"a-1", "b-1"})
        job = await f.submit()
        paid = job["paid_price_minor"]
        path = f"/v1/renders/{job['id']}"
        await f.poll(path, _some_validated_some_rendering, 60)

        first = await f.http.post(f"{path}/cancel", json={}, headers=bearer(f.user_token))
        assert first.status_code == 200, first.text
        assert first.json()["cancelled"] is True
        refund = first.json()["refund_amount_minor"]

        final = await f.get(path)
        assert final["step"] == "Cancelled"
        assert all(x["status"] in ("Validated", "Failed") for x in final["frame_jobs"])
        validated = sum(
            x["end_frame"] - x["start_frame"] + 1
            for x in final["frame_jobs"]
            if x["status"] == "Validated"
        )
        assert 0 < validated < frames
        assert refund == cancel_refund(paid, frames, validated)
        assert 0 < refund < paid

        again = await f.http.post(f"{path}/cancel", json={}, headers=bearer(f.user_token))
        assert again.status_code == 200, again.text
        assert again.json() == {"cancelled": True, "refund_amount_minor": refund}

        assert await ledger_of(db, job["id"]) == [("charge", -paid), ("refund", refund)]
        assert await f.balance() == CREDIT - paid + refund
        assert await open_ranges(db, job["id"]) == 0

        # Every range a node was rendering got CancelRender for that node...
        rendering = await db.fetch(
            "SELECT f.id, f.node_id FROM frame_jobs f WHERE f.job_id = $1 AND f.status = 'Failed'"
            " AND f.node_id IS NOT NULL AND NOT EXISTS (SELECT 1 FROM frame_reports r"
            " WHERE r.frame_job_id = f.id AND r.frame_number = f.end_frame)",
            UUID(job["id"]),
        )
        assert rendering, "no node was rendering when the job was cancelled"
        cancels = {
            (UUID(r["payload"]["frame_job_id"]), r["node_id"])
            for r in await db.fetch(
                "SELECT node_id, payload FROM node_commands WHERE type = 'CancelRender'"
                " AND payload->>'job_id' = $1",
                job["id"],
            )
        }
        assert {(r["id"], r["node_id"]) for r in rendering} <= cancels
        # ...the nodes took it (acknowledged) and went back to Idle...
        with trio.fail_after(15):
            while True:
                unacked = await db.fetchval(
                    "SELECT count(*) FROM node_commands WHERE type = 'CancelRender'"
                    " AND payload->>'job_id' = $1 AND acked_at IS NULL",
                    job["id"],
                )
                if unacked == 0:
                    break
                await trio.sleep(POLL_SEC)
        await f.wait_idle(set(nodes), within=10)
        # ...and no frame of the job was accepted after it ended.
        late = await db.fetchval(
            "SELECT count(*) FROM frame_reports r JOIN frame_jobs f ON f.id = r.frame_job_id"
            " JOIN render_jobs j ON j.id = f.job_id WHERE j.id = $1"
            " AND r.received_at > j.completed_at",
            UUID(job["id"]),
        )
        assert late == 0
        assert (await f.get(path))["step"] == "Cancelled"


# ------------------------------------------------------------------ 3. lease fencing


@pytest.mark.slow
async def test_reports_for_ranges_a_node_does_not_hold_are_409_stale_assignment(
    config: Config, db: Database, tmp_path: Path
) -> None:
    frames = 240
    async with farm(config, tmp_path, frames) as f:
        f.start_agent("a")
        f.start_agent("b")
        nodes = await f.wait_idle({"a-1", "b-1"})
        job = await f.submit()
        path = f"/v1/renders/{job['id']}"
        report_path = f"/v1/internal/render/jobs/{job['id']}/frames"

        def held_range(body: dict[str, Any]) -> bool:
            return any(x["status"] == "Rendering" for x in body["frame_jobs"])

        body = await f.poll(path, held_range, 60)
        held = next(x for x in body["frame_jobs"] if x["status"] == "Rendering")
        holder = held["node_id"]
        other = next(i for i in nodes.values() if i != holder)
        # The other node reports a frame of a range it does not hold.
        response = await f.node_post(
            other,
            report_path,
            {"node_id": other, "frame_job_id": held["id"], "frame_number": held["start_frame"]},
        )
        assert response.status_code == 409, response.text
        assert response.json()["error"]["code"] == "stale_assignment"
        # Its last frame, which would have made the range validate, is refused all the same.
        response = await f.node_post(
            other,
            report_path,
            {"node_id": other, "frame_job_id": held["id"], "frame_number": held["end_frame"]},
        )
        assert response.status_code == 409, response.text
        assert response.json()["error"]["code"] == "stale_assignment"

        final = await f.poll(path, terminal, 60)
        assert final["step"] == "Completed", final
        assert await f.export_frames(final) == list(range(frames))
        # After the job ended, even the node that rendered a range is refused.
        done = next(x for x in final["frame_jobs"] if x["status"] == "Validated")
        response = await f.node_post(
            done["node_id"],
            report_path,
            {
                "node_id": done["node_id"],
                "frame_job_id": done["id"],
                "frame_number": done["end_frame"],
            },
        )
        assert response.status_code == 409, response.text
        assert response.json()["error"]["code"] == "stale_assignment"
        assert (await f.get(path))["step"] == "Completed"
        assert await ledger_of(db, job["id"]) == [("charge", -job["paid_price_minor"])]


# ------------------------------------------------------------------ 5. fail, then retry


@pytest.mark.slow
async def test_a_failed_job_is_refunded_in_full_and_its_retry_is_charged_and_completes(
    config: Config, db: Database, tmp_path: Path
) -> None:
    frames = 240
    async with farm(config, tmp_path, frames, max_attempts=1) as f:
        f.start_agent("steady")
        f.start_agent("doomed")
        nodes = await f.wait_idle({"steady-1", "doomed-1"})
        job = await f.submit()
        paid = job["paid_price_minor"]
        path = f"/v1/renders/{job['id']}"

        def doomed_rendering(body: dict[str, Any]) -> bool:
            return any(x.get("node_id") == nodes["doomed-1"] for x in early_ranges(body))

        await f.poll(path, doomed_rendering, 60)
        f.kill_agent("doomed")  # its range dies with it: with max_attempts 1 the job fails
        failed = await f.poll(path, terminal, 30)
        assert failed["step"] == "Failed", failed
        assert failed["failed_message"]
        assert "at most 1" in failed["failed_message"]
        assert await ledger_of(db, job["id"]) == [("charge", -paid), ("refund", paid)]
        assert await f.balance() == CREDIT
        assert await open_ranges(db, job["id"]) == 0
        f.start_agent("doomed")  # back from the dead, under the same identity

        response = await f.http.post(f"{path}/retry", headers=bearer(f.user_token))
        assert response.status_code == 201, response.text
        retry = response.json()
        assert retry["id"] != job["id"]
        assert retry["paid_price_minor"] == paid
        assert await f.balance() == CREDIT - paid
        # A second retry of the same failure (a double click) is refused and charges nothing.
        twice = await f.http.post(f"{path}/retry", headers=bearer(f.user_token))
        assert twice.status_code == 409, twice.text
        assert twice.json()["error"]["code"] == "already_retried"
        assert twice.json()["error"]["details"]["retry_job_id"] == retry["id"]
        assert await f.balance() == CREDIT - paid
        retry_path = f"/v1/renders/{retry['id']}"
        final = await f.poll(retry_path, terminal, 60)
        assert final["step"] == "Completed", final
        assert final["retry_count"] == 1
        assert await f.export_frames(final) == list(range(frames))
        assert await ledger_of(db, retry["id"]) == [("charge", -paid)]
        assert await f.balance() == CREDIT - paid
        # Only a Failed job is retried; the original stays Failed and refunded.
        again = await f.http.post(f"{retry_path}/retry", headers=bearer(f.user_token))
        assert again.status_code == 409
        assert again.json()["error"]["code"] == "not_failed"
        assert (await f.get(path))["step"] == "Failed"
