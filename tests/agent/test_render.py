"""A RenderFrames range rendered for real (PyAV), uploaded to the real embedded S3 with a
presigned PUT, reported to a stand-in orchestrator: frames, crashes, trims and fencing."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from uuid import UUID, uuid4

import httpx
import pytest
import trio

from flatrender import media
from flatrender.agent.client import SignedClient
from flatrender.agent.commands import RenderFrames
from flatrender.agent.faults import NO_FAULTS, RangePlan
from flatrender.agent.render import AeProcess, Outcome, RenderSettings, render_range
from flatrender.agent.work import RangeProgress
from flatrender.domain import signing
from flatrender.storage import MinioStore
from tests.agent.stub_orchestrator import MASTER_KEY, StubState, wait_for


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient() as http:
        yield http


@pytest.fixture
def client(stub: StubState, stub_url: str, http: httpx.AsyncClient) -> SignedClient:
    node_id = uuid4()
    stub.names["sim-1"] = node_id
    return SignedClient(http, stub_url, node_id, signing.node_secret(MASTER_KEY, node_id), "sim-1")


async def command(store: MinioStore, start: int, end: int, fmt: str = "mp4") -> RenderFrames:
    job_id, range_id = uuid4(), uuid4()
    key = f"renders/{job_id}/{range_id}.{fmt}"
    return RenderFrames(
        id=uuid4(),
        job_id=job_id,
        frame_job_id=range_id,
        start_frame=start,
        end_frame=end,
        upload_url=await store.presign_put(key),
        frame_rate=25,
        output_format=fmt,
        output_key=key,
    )


async def run(
    client: SignedClient,
    cmd: RenderFrames,
    tmp_path: Path,
    plan: RangePlan = NO_FAULTS,
    progress: RangeProgress | None = None,
    frame_time: float = 0.001,
) -> Outcome:
    async with httpx.AsyncClient() as http:
        return await render_range(
            client,
            http,
            cmd,
            progress or RangeProgress.of(cmd),
            plan,
            AeProcess("2024"),
            RenderSettings(frame_time=frame_time, ae_restart_delay=0.01, work_dir=tmp_path),
        )


async def frames_in(store: MinioStore, key: str, tmp_path: Path) -> list[int]:
    path = tmp_path / "downloaded"
    await store.download_file(key, path)
    assert media.probe_frame_count(path) == len(signatures := media.decode_frame_signatures(path))
    return signatures


def leftovers(work_dir: Path) -> list[Path]:
    """Outputs left in the work folder (the agent removes them after the upload)."""
    return list(work_dir.glob("*.mp4"))


def reported(stub: StubState, cmd: RenderFrames) -> list[int]:
    return [
        b["frame_number"] for b in stub.of("/frames") if UUID(b["frame_job_id"]) == cmd.frame_job_id
    ]


async def test_range_is_uploaded_with_exactly_its_frames_before_its_last_frame_is_reported(
    stub: StubState, client: SignedClient, store: MinioStore, tmp_path: Path
) -> None:
    cmd = await command(store, 10, 24)
    present_at_report: dict[int, bool] = {}

    async def look(body: dict[str, Any]) -> None:
        present_at_report[body["frame_number"]] = await store.stat(cmd.output_key) is not None

    stub.frame_hook = look
    assert await run(client, cmd, tmp_path) is Outcome.DONE
    assert reported(stub, cmd) == list(range(10, 25))
    assert present_at_report[24] and not present_at_report[23]
    assert await frames_in(store, cmd.output_key, tmp_path) == list(range(10, 25))
    info = await store.stat(cmd.output_key)
    assert info is not None and stub.of("/frames")[-1]["file_size_bytes"] == info.size
    assert not leftovers(tmp_path)


async def test_png_output_is_a_still_of_the_start_frame(
    stub: StubState, client: SignedClient, store: MinioStore, tmp_path: Path
) -> None:
    cmd = await command(store, 42, 42, fmt="png")
    assert await run(client, cmd, tmp_path) is Outcome.DONE
    assert await frames_in(store, cmd.output_key, tmp_path) == [42]
    assert reported(stub, cmd) == [42]


async def test_trim_while_running_makes_the_output_end_at_the_new_last_frame(
    stub: StubState, client: SignedClient, store: MinioStore, tmp_path: Path
) -> None:
    cmd = await command(store, 0, 99)
    progress = RangeProgress.of(cmd)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(run, client, cmd, tmp_path, RangePlan(), progress, 0.01)
        await wait_for(lambda: reported(stub, cmd))
        assert progress.trim(progress.next_frame + 2).value == "applied"
    end = progress.end
    assert end < 20
    assert reported(stub, cmd) == list(range(0, end + 1))
    assert await frames_in(store, cmd.output_key, tmp_path) == list(range(0, end + 1))


async def test_crash_with_reset_resumes_after_the_last_known_frame(
    stub: StubState, client: SignedClient, store: MinioStore, tmp_path: Path
) -> None:
    cmd = await command(store, 0, 9)
    stub.crash_action = "ResetAndRestart"
    assert await run(client, cmd, tmp_path, RangePlan(crash_frame=4)) is Outcome.DONE
    (crash,) = stub.of("/crash")
    assert crash["last_known_frame"] == 3 and crash["crash_signal"] == "SIGSEGV"
    assert UUID(crash["frame_job_id"]) == cmd.frame_job_id
    assert reported(stub, cmd) == list(range(10))  # no frame reported twice
    assert await frames_in(store, cmd.output_key, tmp_path) == list(range(10))


@pytest.mark.parametrize(
    ("action", "outcome"), [("ReassignWork", Outcome.DROPPED), ("RestartNode", Outcome.REBOOT)]
)
async def test_crash_that_moves_the_range_stops_it(
    stub: StubState,
    client: SignedClient,
    store: MinioStore,
    tmp_path: Path,
    action: str,
    outcome: Outcome,
) -> None:
    cmd = await command(store, 0, 9)
    stub.crash_action = action
    assert await run(client, cmd, tmp_path, RangePlan(crash_frame=4)) is outcome
    assert reported(stub, cmd) == [0, 1, 2, 3]
    assert await store.stat(cmd.output_key) is None


async def test_stale_assignment_drops_the_range_at_once(
    stub: StubState, client: SignedClient, store: MinioStore, tmp_path: Path
) -> None:
    cmd = await command(store, 0, 9)
    stub.stale_ranges.add(str(cmd.frame_job_id))
    assert await run(client, cmd, tmp_path) is Outcome.DROPPED
    assert reported(stub, cmd) == [0]  # refused: no further report, no upload
    assert await store.stat(cmd.output_key) is None
