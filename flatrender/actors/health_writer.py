"""The HealthWriter: the one writer of heartbeat samples, in batches.

Owns a bounded in-memory buffer of `HealthSample`s and, while `run` runs, the task that drains
it into ``node_health_samples`` (COPY) and into the volatile columns of ``nodes``. The heartbeat
path only calls the synchronous `HealthWriter.submit`, which never blocks: when the buffer is full
the oldest sample is dropped, because health history is telemetry and the newest heartbeat is
the one worth keeping. A database outage never crashes the writer: samples stay buffered and
the flush is retried with a backoff.
"""

from __future__ import annotations

import logging
import operator
from collections import deque
from collections.abc import Sequence
from uuid import UUID

import attrs
import trio
from asyncpg import exceptions as pg

from flatrender.domain.bounds import INT4
from flatrender.domain.model import HealthSample
from flatrender.persistence.db import (
    UNAVAILABLE_ERRORS,
    Database,
    DatabaseUnavailable,
    DataRefused,
)
from flatrender.persistence.health import SAMPLE_COLUMNS

logger = logging.getLogger("flatrender.health_writer")

# Unknown (deleted) nodes: a COPY straight into the table would fail the whole batch on the
# foreign key, and COPY into a temp table plus INSERT ... SELECT ... JOIN nodes writes every
# sample twice. Instead the batch's distinct node ids are locked first; the samples of ids that
# do not come back are left out of the COPY. FOR NO KEY UPDATE blocks a concurrent DELETE of a
# locked node until commit (so the COPY cannot hit the foreign key), and takes the row locks
# that UPDATE_NODES needs anyway, in id order, so that two writers of several nodes rows cannot
# deadlock. Cost: one index lookup per distinct node (a few hundred) per flush.
LOCK_NODES = "SELECT id FROM nodes WHERE id = ANY($1::uuid[]) ORDER BY id FOR NO KEY UPDATE"

# One row per node (its latest sample in the batch): each nodes row is written at most once per
# flush, and never with a sample older than the one it already holds.
UPDATE_NODES = """
UPDATE nodes AS n
SET last_heartbeat_at = v.recorded_at,
    last_cpu_pct = v.cpu_pct,
    last_ram_available_mb = v.ram_available_mb,
    ae_running = v.ae_running,
    cache_used_gb = v.cache_used_gb,
    current_job_id = v.current_job_id
FROM unnest($1::uuid[], $2::timestamptz[], $3::int[], $4::int[], $5::bool[], $6::int[],
            $7::uuid[])
     AS v(node_id, recorded_at, cpu_pct, ram_available_mb, ae_running, cache_used_gb,
          current_job_id)
WHERE n.id = v.node_id
  AND (n.last_heartbeat_at IS NULL OR n.last_heartbeat_at <= v.recorded_at)
"""

# Worth retrying: the server is unreachable, restarting, out of resources, or chose us as a
# deadlock victim. Any other failure would recur on every retry of the same batch.
_TRANSIENT: tuple[type[BaseException], ...] = (
    DatabaseUnavailable,
    *UNAVAILABLE_ERRORS,
    pg.PostgresConnectionError,
    pg.OperatorInterventionError,
    pg.InsufficientResourcesError,
    pg.TransactionRollbackError,
)
# A sample as a COPY record, in SAMPLE_COLUMNS order (what attrs.astuple gives, for less CPU).
_record = operator.attrgetter(*SAMPLE_COLUMNS)


def _transient(exc: BaseException) -> bool:
    if isinstance(exc, DataRefused):
        return False  # a value refused: the same batch fails the same way every time
    if isinstance(exc, DatabaseUnavailable) and exc.__cause__ is not None:
        exc = exc.__cause__
    return isinstance(exc, _TRANSIENT)


def check_sample(sample: HealthSample) -> None:
    """Raise `DataRefused` for a sample the table cannot hold (an integer outside int4)."""
    frame = sample.current_frame
    for name, value in (
        ("cpu_pct", sample.cpu_pct),
        ("ram_available_mb", sample.ram_available_mb),
        ("cache_used_gb", sample.cache_used_gb),
        ("current_frame", frame if frame is not None else 0),
    ):
        if value not in INT4:
            raise DataRefused(f"{name} is out of range")


@attrs.frozen
class HealthWriterStatistics:
    submitted: int  # accepted by submit()
    written: int  # rows COPYed into node_health_samples
    dropped: int  # oldest samples pushed out of a full buffer
    skipped: int  # samples of nodes that no longer exist
    rejected: int  # samples in batches that failed for good (logged as errors)
    batches: int  # committed flushes
    pending: int  # buffered or being written
    last_flush_sec: float  # duration of the last committed flush


class HealthWriter:
    """Batches heartbeat samples into PostgreSQL; see the module docstring for the contract."""

    def __init__(
        self,
        db: Database,
        *,
        flush_interval_sec: float = 0.5,
        max_batch: int = 2000,
        capacity: int = 50_000,
        retry_initial_sec: float = 0.1,
        retry_max_sec: float = 5.0,
        final_flush_timeout_sec: float = 2.0,
    ) -> None:
        if max_batch < 1 or capacity < 1:
            raise ValueError("max_batch and capacity must be positive")
        self._db = db
        self._interval = flush_interval_sec
        self._max_batch = max_batch
        self._retry = (retry_initial_sec, retry_max_sec)
        self._final_timeout = final_flush_timeout_sec
        self._buffer: deque[HealthSample] = deque(maxlen=capacity)
        self._in_flight = 0
        self._wake = trio.Event()
        self._lock = trio.Lock()  # one batch at a time: samples are written in submission order
        self._submitted = self._written = self._dropped = self._skipped = self._rejected = 0
        self._batches = 0
        self._last_flush_sec = 0.0

    def submit(self, sample: HealthSample) -> bool:
        """Buffer `sample` without blocking or yielding; safe from any trio task.

        Returns False when the buffer was full and its oldest sample was dropped to make room.
        Samples submitted while `run` is not running wait for its next start. Raises
        `DataRefused` for a sample the table cannot hold (`check_sample`), which would
        otherwise poison the whole batch it lands in.
        """
        check_sample(sample)
        self._submitted += 1
        full = len(self._buffer) == self._buffer.maxlen
        if full:
            self._dropped += 1  # the deque's maxlen pushes the oldest out on append
        self._buffer.append(sample)
        if len(self._buffer) >= self._max_batch:
            self._wake.set()
        return not full

    def statistics(self) -> HealthWriterStatistics:
        return HealthWriterStatistics(
            submitted=self._submitted,
            written=self._written,
            dropped=self._dropped,
            skipped=self._skipped,
            rejected=self._rejected,
            batches=self._batches,
            pending=len(self._buffer) + self._in_flight,
            last_flush_sec=self._last_flush_sec,
        )

    async def run(
        self, *, task_status: trio.TaskStatus[HealthWriter] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Flush every `flush_interval_sec`, or at once when `max_batch` samples wait.

        Runs until cancelled; never returns. On its way out (cancellation) it makes one last
        flush, shielded and bounded by `final_flush_timeout_sec`. Raises only on bugs; the buffer
        survives, so the same writer may be run again (a supervisor's restart).
        """
        task_status.started(self)
        try:
            failures = 0
            while True:
                if failures == 0:
                    with trio.move_on_after(self._interval):
                        await self._wake.wait()
                    self._wake = trio.Event()
                try:
                    await self.flush()
                except Exception as exc:
                    if not _transient(exc):
                        raise  # a bug: flush() swallows what the database refuses for good
                    if failures == 0:
                        logger.warning("database unavailable, keeping health samples: %s", exc)
                    failures += 1
                    initial, ceiling = self._retry
                    await trio.sleep(min(initial * 2.0 ** min(failures - 1, 32), ceiling))
                    continue
                if failures:
                    logger.info("database back after %d failed flushes", failures)
                    failures = 0
        finally:
            with trio.CancelScope(shield=True), trio.move_on_after(self._final_timeout):
                try:
                    await self.flush()
                except Exception as exc:
                    logger.warning("final flush failed: %s", exc)
            if pending := len(self._buffer) + self._in_flight:
                logger.warning("shutting down with %d health samples unwritten", pending)

    async def flush(self) -> None:
        """Write what is buffered now, `max_batch` samples per transaction.

        Raises `DatabaseUnavailable` (or a transient asyncpg error) after putting the failed
        batch back at the front of the buffer. A batch that fails for any other reason (the server
        refuses a value, a bug) is logged, counted as `rejected` and dropped: retrying it would
        block the writer forever, and crashing would take the heartbeat path down with it. May be
        cancelled: the batch being written goes back too (its transaction rolls back).
        """
        async with self._lock:
            # Samples submitted during the flush wait for the next one (or wake it when a batch
            # is full): under a steady stream the writer does not spin on tiny batches.
            remaining = len(self._buffer)
            while remaining > 0 and self._buffer:
                size = min(self._max_batch, remaining, len(self._buffer))
                remaining -= size
                batch = [self._buffer.popleft() for _ in range(size)]
                self._in_flight = size
                started = trio.current_time()
                try:
                    written = await self._write(batch)
                except BaseException as exc:
                    self._in_flight = 0
                    if not isinstance(exc, Exception) or _transient(exc):
                        self._put_back(batch)
                        raise
                    logger.error(
                        "dropped %d health samples that cannot be written", size, exc_info=exc
                    )
                    self._rejected += size
                    continue
                self._in_flight = 0
                self._written += written
                self._skipped += size - written
                self._batches += 1
                self._last_flush_sec = trio.current_time() - started

    def _put_back(self, batch: Sequence[HealthSample]) -> None:
        """Return a batch to the front; samples submitted meanwhile may push its oldest out."""
        buffer = deque(batch, maxlen=self._buffer.maxlen)
        buffer.extend(self._buffer)
        self._dropped += len(batch) + len(self._buffer) - len(buffer)
        self._buffer = buffer

    async def _write(self, batch: Sequence[HealthSample]) -> int:
        latest: dict[UUID, HealthSample] = {}
        for sample in batch:
            seen = latest.get(sample.node_id)
            if seen is None or sample.recorded_at >= seen.recorded_at:
                latest[sample.node_id] = sample
        async with self._db.transaction() as conn:
            known = {row["id"] for row in await conn.fetch(LOCK_NODES, list(latest))}
            records = [_record(s) for s in batch if s.node_id in known]
            if not records:
                return 0
            await conn.copy_records_to_table(
                "node_health_samples", records=records, columns=list(SAMPLE_COLUMNS)
            )
            rows = [latest[node_id] for node_id in known]
            await conn.execute(
                UPDATE_NODES,
                [s.node_id for s in rows],
                [s.recorded_at for s in rows],
                [s.cpu_pct for s in rows],
                [s.ram_available_mb for s in rows],
                [s.ae_running for s in rows],
                [s.cache_used_gb for s in rows],
                [s.current_job_id for s in rows],
            )
        return len(records)
