"""Background results nobody waits for (issue 10): a validation's or a merge's result whose write
PostgreSQL refuses fails its step, so the job never stays Rendered or Merging for good; any
other refused message without a reply crashes the job's actor, for its supervisor to restart.
A validation that cannot run on this daemon (its disk) is retried later, not held against the
range or the node.
"""

from __future__ import annotations

import errno
import logging
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from uuid import UUID, uuid4

import pytest
import trio
import trio.testing

from flatrender import media
from flatrender.actors import job, job_effects
from flatrender.actors.job_messages import _Merged, _Validated
from flatrender.actors.merger import MergedExport, Merger, MergeRequest
from flatrender.actors.system import ActorSystem
from flatrender.actors.validation import LOCAL_RETRY_INITIAL_SEC, OutputCheck
from flatrender.domain import job_steps as js
from flatrender.persistence import job_state
from flatrender.persistence.db import Database, DataRefused
from flatrender.storage import MinioStore
from tests.actors.test_job_actor import (
    PRICE,
    answer_of,
    crashing_node,
    inspect,
    queue,
    rendering_job,
)
from tests.helpers import Tokens


def rendered(node_id: UUID, r: js.RangeState) -> Any:
    """The range's last frame reported: it is Rendered, and its validation starts."""
    now = datetime.now(UTC)
    return lambda reply: job.ReportFrame(node_id, r.id, r.end_frame, 10, now, reply)


async def test_a_refused_validation_result_fails_the_attempt_instead_of_staying_rendered(
    db: Database, actor_system: ActorSystem, nursery: trio.Nursery, tokens: Tokens
) -> None:
    job_id, inbox, first, node_id = await crashing_node(db, actor_system, nursery, tokens)
    # Queued together: the poisoned result is served right after the report, before the real
    # validation (of an output never uploaded) can answer.
    reported = queue(inbox, rendered(node_id, first))
    inbox.send_nowait(_Validated(first.id, OutputCheck(True, preview_b64="iVBOR\x00")))

    assert await answer_of(reported) is True
    state = await inspect(inbox)

    assert state.step is js.JobStep.RENDERING
    failed = state.range(first.id)
    assert failed is not None and failed.status is js.RangeStatus.FAILED
    assert "could not be stored" in (failed.last_error or "")
    assert "0x00" in (failed.last_error or "")  # PostgreSQL's reason, made printable
    again = next(r for r in state.current_ranges if r.replaces_id == first.id)
    assert (again.status, again.attempt) == (js.RangeStatus.PENDING, 2)
    row = await db.fetchrow("SELECT step, image_preview_b64 FROM render_jobs WHERE id = $1", job_id)
    assert tuple(row) == ("Rendering", None)
    stored = await db.fetchval("SELECT status FROM frame_jobs WHERE id = $1", first.id)
    assert stored == "Failed"


async def test_a_refused_merge_result_fails_the_job_with_its_refund(
    db: Database,
    actor_system: ActorSystem,
    nursery: trio.Nursery,
    tokens: Tokens,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    async def merging(self: Merger, request: MergeRequest) -> MergedExport:
        await trio.sleep_forever()  # the real merge is still running when the result comes
        raise AssertionError

    monkeypatch.setattr(Merger, "merge", merging)
    job_id, inbox, first, node_id = await crashing_node(db, actor_system, nursery, tokens)
    assert len((await inspect(inbox)).current_ranges) == 1  # validated, the job merges
    poisoned = MergedExport(
        uuid4(), f"exports/{job_id}/\x00.mp4", "t.png", 10, 1, 8.0, 64, 36, 240, ""
    )
    # Queued together: rendered, validated (the job is Merging), and the merge's result refused.
    reported = queue(inbox, rendered(node_id, first))
    inbox.send_nowait(_Validated(first.id, OutputCheck(True)))
    inbox.send_nowait(_Merged(poisoned, None))

    final = queue(inbox, job.Inspect)  # answered by the actor as it ends, the job terminal

    assert await answer_of(reported) is True
    assert (await answer_of(final)).step is js.JobStep.FAILED
    row = await db.fetchrow(STEP, job_id)
    assert row["step"] == "Failed"
    assert "the export could not be recorded" in row["failed_message"]
    refunds = await db.fetch(REFUNDS, job_id)
    assert [r["amount_minor"] for r in refunds] == [PRICE]
    assert await db.fetchval("SELECT count(*) FROM exports WHERE job_id = $1", job_id) == 0


STEP = "SELECT step, failed_message FROM render_jobs WHERE id = $1"
REFUNDS = "SELECT amount_minor FROM ledger_entries WHERE job_id = $1 AND kind = 'refund'"


async def test_another_refused_message_without_a_reply_crashes_the_actor_for_a_restart(
    db: Database,
    actor_system: ActorSystem,
    nursery: trio.Nursery,
    tokens: Tokens,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from tests.actors.test_node_actor import heartbeat, register

    node_id = await register(actor_system, "n1")
    await heartbeat(actor_system, node_id)
    job_id = await rendering_job(db, tokens.user_id)
    refused = DataRefused("value out of int32 range")

    async def work_dropped(self: job.JobActor, node_id: UUID, work_id: UUID) -> None:
        raise refused  # nothing of WorkDropped's own is a client's value: simulated

    monkeypatch.setattr(job.JobActor, "_work_dropped", work_dropped)
    crashed: list[BaseException] = []
    ended = trio.Event()

    async def run(*, task_status: trio.TaskStatus[Any]) -> None:
        try:
            await job.JobActor.run(actor_system.jobs.deps, job_id, task_status=task_status)
        except BaseException as e:  # what the supervisor sees, and restarts the actor for
            crashed.append(e)
        finally:
            ended.set()

    inbox: trio.MemorySendChannel[Any] = await nursery.start(run)
    first = (await inspect(inbox)).ranges[0]
    assert await answer_of(queue(inbox, lambda r: job.AssignRange(first.id, node_id, r)))
    inbox.send_nowait(job.WorkDropped(node_id, first.id))
    waiting = queue(inbox, job.Inspect)  # behind the dropped work: failed, not left hanging

    with trio.fail_after(5):
        await ended.wait()
    [error] = crashed
    assert isinstance(error, BaseExceptionGroup)
    assert error.subgroup(DataRefused) is not None
    with pytest.raises(trio.EndOfChannel):
        await answer_of(waiting)
    # The restarted actor finds the range where it was: nothing was half-applied.
    loaded = await job_state.load(db, job_id)
    assert loaded is not None
    held = loaded[1].range(first.id)
    assert held is not None and held.status is js.RangeStatus.ASSIGNED


@pytest.fixture
def mock_clock() -> trio.testing.MockClock:
    return trio.testing.MockClock()


class DiskFull:
    """The daemon's disk while outputs download: full, then freed. Each check's (or merge's)
    end is signalled, after the error is raised and before the task sleeps or answers."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.full = True
        self.fills_after_validation = False
        self.checks = 0  # validations and merges that ended
        self.merges = 0
        self.checked = trio.Event()
        download = MinioStore._download_sync
        check = job_effects.check_output

        def download_sync(store: MinioStore, key: str, path: str, max_bytes: int | None) -> None:
            if self.full:
                raise OSError(errno.ENOSPC, "No space left on device", path)
            download(store, key, path, max_bytes)

        async def observed(*args: Any) -> OutputCheck:
            try:
                return await check(*args)
            finally:
                self.checks += 1
                self.checked.set()
                self.full = self.full or self.fills_after_validation

        async def merge(merger: Merger, request: MergeRequest) -> MergedExport:
            try:
                return await merged(merger, request)
            finally:
                self.merges += 1
                self.checks += 1
                self.checked.set()

        merged = Merger.merge
        monkeypatch.setattr(MinioStore, "_download_sync", download_sync)
        monkeypatch.setattr(job_effects, "check_output", observed)
        monkeypatch.setattr(Merger, "merge", merge)

    async def until(self, checks: int) -> None:
        while self.checks < checks:
            await self.checked.wait()
            self.checked = trio.Event()


async def test_a_full_disk_while_validating_retries_later_without_failing_the_range(
    db: Database,
    actor_system: ActorSystem,
    nursery: trio.Nursery,
    tokens: Tokens,
    mock_clock: trio.testing.MockClock,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    tmp_path: Path,
) -> None:
    job_id, inbox, first, node_id = await crashing_node(db, actor_system, nursery, tokens)
    segment = tmp_path / "r.mp4"
    media.render_segment(
        segment,
        start_frame=first.start_frame,
        end_frame=first.end_frame,
        frame_rate=30,
        width=64,
        height=36,
    )
    key = job_state.output_key(job_id, first.id, "mp4")
    await actor_system.jobs.deps.store.put_file(key, segment, "video/mp4")
    disk = DiskFull(monkeypatch)

    with caplog.at_level(logging.ERROR, logger="flatrender.validation"):
        assert await answer_of(queue(inbox, rendered(node_id, first))) is True
        await disk.until(1)
        mock_clock.jump(LOCAL_RETRY_INITIAL_SEC)  # the pause doubles: the next one is longer
        await disk.until(2)

        waiting = (await inspect(inbox)).range(first.id)
        assert waiting is not None
        assert (waiting.status, waiting.attempt) == (js.RangeStatus.RENDERED, 1)
        logged = [r for r in caplog.records if r.name == "flatrender.validation"]
        assert [r.levelno for r in logged] == [logging.ERROR] * 2
        assert "No space left on device" in logged[0].getMessage()

        disk.full = False
        mock_clock.jump(2 * LOCAL_RETRY_INITIAL_SEC)
        await disk.until(3)

    state = await inspect(inbox)
    validated = state.range(first.id)
    assert validated is not None
    assert (validated.status, validated.attempt) == (js.RangeStatus.VALIDATED, 1)
    assert disk.checks - disk.merges == 3  # the merge that follows may have run meanwhile
    assert not any(r.replaces_id == first.id for r in state.ranges)
    assert await db.fetchval("SELECT consecutive_failures FROM nodes WHERE id = $1", node_id) == 0


async def test_a_full_disk_while_merging_retries_later_without_failing_the_job(
    db: Database,
    actor_system: ActorSystem,
    nursery: trio.Nursery,
    tokens: Tokens,
    mock_clock: trio.testing.MockClock,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    job_id, inbox, first, node_id = await crashing_node(db, actor_system, nursery, tokens)
    segment = tmp_path / "r.mp4"
    media.render_segment(
        segment, start_frame=first.start_frame, end_frame=first.end_frame, frame_rate=30
    )
    key = job_state.output_key(job_id, first.id, "mp4")
    await actor_system.jobs.deps.store.put_file(key, segment, "video/mp4")
    disk = DiskFull(monkeypatch)
    disk.full, disk.fills_after_validation = False, True  # full once validated, before merging

    assert await answer_of(queue(inbox, rendered(node_id, first))) is True
    await disk.until(1)  # the validation
    await disk.until(2)  # the merge, refused by the disk
    assert (await inspect(inbox)).step is js.JobStep.MERGING

    disk.full = False
    mock_clock.jump(LOCAL_RETRY_INITIAL_SEC)
    await disk.until(3)

    assert (await inspect(inbox)).step is js.JobStep.COMPLETED
    assert (disk.checks, disk.merges) == (3, 2)
    row = await db.fetchrow("SELECT step, failed_message FROM render_jobs WHERE id = $1", job_id)
    assert tuple(row) == ("Completed", None)
