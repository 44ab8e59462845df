"""Reaper: every task per round with the injected wall clock, isolation of failing tasks, the
periodic loop (on trio's autojumping clock), and the health-history tasks on a real database."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from uuid import UUID

import attrs
import pytest
import trio
import trio.testing

from flatrender.actors.reaper import Reaper, ReapTask, health_tasks
from flatrender.persistence.db import Database, DatabaseUnavailable
from tests.persistence.test_health import add_node, every, store, stored

NOW = datetime(2030, 6, 1, 12, 0, tzinfo=UTC)


@attrs.define
class Recorder:
    """A pure-python task: records the `now` it got and trio's clock, returns `removed`."""

    removed: int = 0
    calls: list[tuple[datetime, float]] = attrs.Factory(list)

    async def __call__(self, now: datetime) -> int:
        self.calls.append((now, trio.current_time()))
        return self.removed


def failing(exc: Exception) -> Callable[[datetime], Awaitable[int]]:
    async def run(now: datetime) -> int:
        raise exc

    return run


def reaper_records(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == "flatrender.reaper"]


async def test_run_once_runs_every_task_with_the_injected_now(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="flatrender.reaper")
    exports, snapshots = Recorder(removed=3), Recorder(removed=0)
    reaper = Reaper(
        [ReapTask("exports", exports), ReapTask("snapshots", snapshots)], now=lambda: NOW
    )

    assert await reaper.run_once() == {"exports": 3, "snapshots": 0}

    assert [now for now, _ in exports.calls + snapshots.calls] == [NOW, NOW]
    # One line per task that removed something, none for the idle one.
    assert [r.getMessage() for r in reaper_records(caplog)] == ["reap exports removed 3"]
    stats = reaper.statistics()
    assert (stats.rounds, stats.failures, stats.removed) == (1, 0, {"exports": 3, "snapshots": 0})


async def test_a_failing_task_is_logged_and_the_others_still_run(
    caplog: pytest.LogCaptureFixture,
) -> None:
    before, after = Recorder(removed=1), Recorder(removed=2)
    reaper = Reaper(
        [
            ReapTask("before", before),
            ReapTask("broken", failing(RuntimeError("boom"))),
            ReapTask("offline", failing(DatabaseUnavailable("no route to host"))),
            ReapTask("after", after),
        ],
        now=lambda: NOW,
    )

    assert await reaper.run_once() == {"before": 1, "after": 2}

    records = {r.getMessage().split(" ")[1]: r for r in reaper_records(caplog)}
    assert records["broken"].levelno == logging.ERROR and records["broken"].exc_info
    assert records["offline"].levelno == logging.WARNING
    assert reaper.statistics().failures == 2


async def test_the_loop_runs_a_round_at_once_and_then_every_interval(
    autojump_clock: trio.testing.MockClock,
) -> None:
    wall = iter(NOW + timedelta(minutes=i) for i in range(10))
    task = Recorder()
    reaper = Reaper([ReapTask("task", task)], interval_sec=60.0, now=lambda: next(wall))

    async with trio.open_nursery() as nursery:
        assert await nursery.start(reaper.run) is reaper
        await trio.sleep(150)
        nursery.cancel_scope.cancel()

    start = task.calls[0][1]
    assert [(now, at - start) for now, at in task.calls] == [
        (NOW, 0.0),
        (NOW + timedelta(minutes=1), 60.0),
        (NOW + timedelta(minutes=2), 120.0),
    ]


async def test_the_loop_survives_a_failing_task(autojump_clock: trio.testing.MockClock) -> None:
    task = Recorder()
    reaper = Reaper([ReapTask("broken", failing(ValueError())), ReapTask("task", task)])

    async with trio.open_nursery() as nursery:
        await nursery.start(reaper.run)
        await trio.sleep(61)
        nursery.cancel_scope.cancel()

    assert len(task.calls) == 2
    assert reaper.statistics().failures == 2


def test_task_names_must_be_unique() -> None:
    with pytest.raises(ValueError):
        Reaper([ReapTask("a", Recorder()), ReapTask("a", Recorder())])


async def test_health_tasks_apply_retention_then_downsampling(db: Database) -> None:
    node: UUID = await add_node(db)
    # One sample a minute from 3 days ago up to now: 2 days of retention, downsampled after 1 h.
    start = NOW - timedelta(days=3)
    await store(db, every(node, start, 3 * 24 * 60 + 1, 60))
    reaper = Reaper(
        health_tasks(db, retention_days=2, downsample_after_hours=1, bucket_sec=3600),
        now=lambda: NOW,
    )

    removed = await reaper.run_once()

    # Retention: the first day (1440 samples, recorded before NOW - 2 days) goes.
    # Downsampling: NOW - 2 days .. NOW - 1 h is 47 whole hours of 60 samples, one kept each.
    assert removed == {"health_retention": 1440, "health_downsample": 47 * 59}
    rows = await stored(db, node)
    assert rows[0] == (NOW - timedelta(days=2, minutes=-59), True)
    assert sum(downsampled for _, downsampled in rows) == 47
    assert len(rows) == 47 + 61  # and the last hour (plus NOW itself) is untouched
    assert await reaper.run_once() == {"health_retention": 0, "health_downsample": 0}


def test_health_tasks_reject_nonsense() -> None:
    with pytest.raises(ValueError):
        health_tasks(None, retention_days=0)  # type: ignore[arg-type]
