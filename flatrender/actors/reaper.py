"""The Reaper: a periodic janitor that runs a list of removal tasks.

Owns nothing but its schedule. Each `ReapTask` removes what has expired as of a wall-clock
instant (injected, so tests choose it) and returns how much it removed; the Reaper runs them in
order every `interval_sec` (trio's clock) and keeps going whatever they raise. What the tasks
are is the composition root's business: health-history retention here (`health_tasks`), expired
snapshots and snapshots past their render deadline (`snapshot_tasks`), exports
(`retention.retention_tasks`).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from datetime import datetime, timedelta
from uuid import UUID

import attrs
import trio

from flatrender.actors import snapshot_objects
from flatrender.clock import utc_now
from flatrender.persistence import health, snapshots
from flatrender.persistence.db import UNAVAILABLE_ERRORS, Database, DatabaseUnavailable
from flatrender.storage import ObjectStore, StorageError, StorageUnavailable

logger = logging.getLogger("flatrender.reaper")

_UNAVAILABLE: tuple[type[BaseException], ...] = (DatabaseUnavailable, *UNAVAILABLE_ERRORS)


@attrs.frozen
class ReapTask:
    """`run(now)` removes what expired as of `now` and returns how much it removed.

    It may be cancelled at any await (daemon shutdown), so it must leave consistent state when
    it is: commit in bounded batches. Whatever it raises is logged by the Reaper and forgotten.
    """

    name: str
    run: Callable[[datetime], Awaitable[int]]


@attrs.frozen
class ReaperStatistics:
    rounds: int
    failures: int  # task runs that raised
    removed: Mapping[str, int]  # per task, since start


class Reaper:
    """Runs every task once per round; one task's failure never stops the others."""

    def __init__(
        self,
        tasks: Sequence[ReapTask],
        *,
        interval_sec: float = 60.0,
        now: Callable[[], datetime] = utc_now,
    ) -> None:
        if len({task.name for task in tasks}) != len(tasks):
            raise ValueError("reap task names must be unique")
        self._tasks = tuple(tasks)
        self._interval = interval_sec
        self._now = now
        self._rounds = 0
        self._failures = 0
        self._removed = {task.name: 0 for task in self._tasks}

    async def run(self, *, task_status: trio.TaskStatus[Reaper] = trio.TASK_STATUS_IGNORED) -> None:
        """A round at once, then one every `interval_sec` from the start of the previous one.

        Runs until cancelled (a round in progress is cancelled with it); never returns, and raises
        only what is not an `Exception` (cancellation, KeyboardInterrupt).
        """
        task_status.started(self)
        while True:
            next_round = trio.current_time() + self._interval
            await self.run_once()
            await trio.sleep_until(next_round)

    async def run_once(self) -> dict[str, int]:
        """One round with the same `now` for every task: name → removed; failed tasks are absent."""
        now = self._now()
        removed: dict[str, int] = {}
        for task in self._tasks:
            try:
                count = await task.run(now)
            except _UNAVAILABLE as exc:
                self._failures += 1
                logger.warning("reap %s skipped, database unavailable: %s", task.name, exc)
                continue
            except Exception:
                self._failures += 1
                logger.exception("reap %s failed", task.name)
                continue
            removed[task.name] = count
            self._removed[task.name] += count
            if count > 0:
                logger.info("reap %s removed %d", task.name, count)
        self._rounds += 1
        return removed

    def statistics(self) -> ReaperStatistics:
        return ReaperStatistics(
            rounds=self._rounds, failures=self._failures, removed=dict(self._removed)
        )


def health_tasks(
    db: Database, retention_days: int, downsample_after_hours: int = 24, bucket_sec: int = 300
) -> list[ReapTask]:
    """Health-history retention: delete samples past `retention_days`, then thin those older
    than `downsample_after_hours` to one per `bucket_sec`. Both count removed rows."""
    if retention_days < 1 or downsample_after_hours < 0 or bucket_sec < 1:
        raise ValueError("need retention_days >= 1, downsample_after_hours >= 0, bucket_sec >= 1")
    retention = timedelta(days=retention_days)
    downsample_after = timedelta(hours=downsample_after_hours)

    async def delete_expired(now: datetime) -> int:
        return await health.delete_older_than(db, now - retention)

    async def downsample(now: datetime) -> int:
        return await health.downsample(db, now - downsample_after, bucket_sec)

    return [
        ReapTask("health_retention", delete_expired),
        ReapTask("health_downsample", downsample),
    ]


def snapshot_tasks(db: Database, store: ObjectStore, batch: int = 200) -> list[ReapTask]:
    """Expired snapshots (Cached or Failed; a render in progress ends with its job first), in
    batches of `batch`: the objects first (the keys each row names, then any superseded attempt
    under its prefix), then the rows (DESIGN §7). A crash in between leaves expired rows without
    objects, removed by the next round; never an object without its row. Counts removed rows; one
    log line per snapshot. A snapshot whose objects storage refuses for good (403) keeps its row
    and is passed by for the rest of the round; only `StorageUnavailable` ends the round (the
    Reaper logs it)."""
    if batch < 1:
        raise ValueError("batch must be positive")

    async def delete_expired(now: datetime) -> int:
        total = 0
        refused: set[UUID] = set()
        while True:
            rows = await snapshots.expired(db, now, batch, skip=refused)
            gone = []
            for row in rows:
                try:
                    await snapshot_objects.remove_all(store, row)
                except StorageUnavailable:
                    raise
                except StorageError as e:
                    logger.warning("snapshot %s kept, object storage refused: %s", row.id, e)
                    refused.add(row.id)
                    continue
                gone.append(row.id)
            removed = await snapshots.delete_expired(db, gone, now) if gone else 0
            for snapshot_id in gone:
                logger.info("reaped snapshot %s", snapshot_id)
            total += removed
            if len(rows) < batch:
                return total

    return [ReapTask("snapshot_expiry", delete_expired)]


def snapshot_deadline_tasks(
    db: Database,
    abort: Callable[[UUID, str], Awaitable[bool]],
    timeout_sec: Callable[[], float],
    batch: int = 100,
) -> list[ReapTask]:
    """Snapshots still Pending or Rendering `timeout_sec()` after their request: `abort(job_id,
    message)` fails each through its job's actor (the snapshot Failed, refunded like any failed
    job, its key free again) and says whether it did. At most `batch` a round; one the actor
    could not take now stays overdue and is tried again next round. Counts aborted jobs."""
    if batch < 1:
        raise ValueError("batch must be positive")

    async def abort_overdue(now: datetime) -> int:
        timeout = timeout_sec()
        if timeout <= 0:
            return 0  # no deadline configured
        aborted = 0
        for job_id in await snapshots.overdue(db, now - timedelta(seconds=timeout), batch):
            message = f"the snapshot was not rendered within {timeout:g} s of its request"
            if await abort(job_id, message):
                logger.warning("snapshot %s failed: %s", job_id, message)
                aborted += 1
        return aborted

    return [ReapTask("snapshot_render_timeout", abort_overdue)]
