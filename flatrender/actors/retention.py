"""Retention: deleting exports (on request or when due), stale render segments and idle replicas.

The rule everywhere is objects first, then rows (DESIGN §7), under the row's lock: a row exists
as long as any of its objects may, so nothing is ever left in object storage that no row names.
When object storage fails, the rows stay and the next attempt deletes what is left (deleting a
missing key is not an error). Only :class:`StorageUnavailable` stops a round: an object storage
refuses for good (403 AccessDenied, ...) is logged and skipped, so it never holds back the rest.
Bucket lifecycle rules are not relied on.

``retention_tasks`` gives the Reaper its tasks; ``delete_export`` is also the HTTP DELETE.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Callable, Collection, Iterable
from datetime import datetime, timedelta
from uuid import UUID

import attrs
import trio

from flatrender.actors.reaper import ReapTask
from flatrender.config import Config
from flatrender.domain.bounds import INT4
from flatrender.persistence import cleanup, exports
from flatrender.persistence.db import Database
from flatrender.storage import ObjectInfo, ObjectStore, StorageError, StorageUnavailable

log = logging.getLogger("flatrender.retention")

SEGMENTS_PREFIX = "renders/"
REPLICAS_PREFIX = "replicas/"


async def delete_keys(store: ObjectStore, keys: Iterable[str]) -> None:
    """Remove every key; raises the first :class:`StorageError` (the rest is not attempted)."""
    for key in keys:
        await store.delete(key)


async def _delete_or_skip(store: ObjectStore, key: str, what: str) -> bool:
    """Delete ``key``; False (logged) when storage refuses it for good. Raises
    :class:`StorageUnavailable`, which ends the caller's round."""
    try:
        await store.delete(key)
    except StorageUnavailable:
        raise
    except StorageError as e:
        log.warning("%s %s not deleted, object storage refused it (skipped): %s", what, key, e)
        return False
    return True


async def delete_export(db: Database, store: ObjectStore, export_id: UUID) -> bool:
    """Delete one export now: its objects, then its rows, in one transaction holding its lock.

    False when there is no such export (deleted already). Raises :class:`StorageError`
    (``StorageUnavailable`` when storage is down): the rows are then kept, so a retry finishes.
    """
    async with db.transaction() as conn:
        row = await exports.lock(conn, export_id)
        if row is None:
            return False
        files = await exports.files_of(conn, [row.id])
        await delete_keys(store, exports.object_keys(row, files))
        await exports.delete_rows(conn, [row.id])
    log.info("export %s deleted on request (owner %s)", row.id, row.user_id)
    return True


async def reap_due_exports(db: Database, store: ObjectStore, now: datetime, batch: int) -> int:
    """Delete every export due at ``now``, ``batch`` per transaction; returns how many went.

    Stops when storage is unavailable: what is left waits for the next round. An export whose
    objects storage refuses keeps its rows, is logged, and is passed by for the rest of the
    round. Each batch commits on its own, so cancelling loses nothing.
    """
    removed = 0
    refused: set[UUID] = set()
    while True:
        outcome = await _reap_export_batch(db, store, now, batch, refused)
        removed += outcome.deleted
        refused |= outcome.refused
        if outcome.unavailable or outcome.locked < batch:
            return removed


@attrs.frozen
class _BatchOutcome:
    locked: int
    deleted: int
    refused: frozenset[UUID]
    unavailable: bool


async def _reap_export_batch(
    db: Database, store: ObjectStore, now: datetime, batch: int, skip: Collection[UUID]
) -> _BatchOutcome:
    """One locked batch of due exports, those in ``skip`` left out."""
    async with db.transaction() as conn:
        due = await exports.lock_due(conn, now, batch, skip=skip)
        if not due:
            return _BatchOutcome(0, 0, frozenset(), unavailable=False)
        files: dict[UUID, list[exports.ExportFile]] = defaultdict(list)
        for f in await exports.files_of(conn, [row.id for row in due]):
            files[f.export_id].append(f)
        deleted: list[exports.ExportRow] = []
        refused: set[UUID] = set()
        unavailable = False

        async with trio.open_nursery() as nursery:

            async def remove(row: exports.ExportRow) -> None:
                nonlocal unavailable
                try:
                    await delete_keys(store, exports.object_keys(row, files[row.id]))
                except StorageUnavailable as e:
                    log.warning("export %s not deleted, object storage unavailable: %s", row.id, e)
                    unavailable = True
                    nursery.cancel_scope.cancel()  # storage is failing: stop this round
                    return
                except StorageError as e:
                    log.warning(
                        "export %s not deleted, object storage refused an object (skipped): %s",
                        row.id,
                        e,
                    )
                    refused.add(row.id)
                    return
                deleted.append(row)

            for row in due:
                nursery.start_soon(remove, row)
        await exports.delete_rows(conn, [row.id for row in deleted])
    for row in deleted:
        log.info(
            "export %s deleted: due %s (owner %s)",
            row.id,
            row.auto_delete_date.isoformat(),
            row.user_id,
        )
    return _BatchOutcome(len(due), len(deleted), frozenset(refused), unavailable)


async def reap_segments(db: Database, store: ObjectStore, cutoff: datetime, limit: int) -> int:
    """Delete up to ``limit`` render outputs no job needs since before ``cutoff``.

    An output is stale when its job is terminal since before ``cutoff``, or when no job row
    names it and the object is older than ``cutoff``. Segments have no rows of their own (the
    frame ranges stay as history), so the count is of objects.
    """
    try:
        listed = await store.list_prefix(SEGMENTS_PREFIX)
    except StorageError as e:
        log.warning("render outputs not reaped, object storage failed: %s", e)
        return 0
    by_job: dict[UUID, list[ObjectInfo]] = defaultdict(list)
    for obj in listed:
        job_id = _job_of(obj.key)
        if job_id is not None:
            by_job[job_id].append(obj)
    if not by_job:
        return 0
    ends = await cleanup.job_ends(db, list(by_job))
    stale: list[str] = []
    for job_id, objects in by_job.items():
        end = ends.get(job_id)
        if end is None:
            stale += [o.key for o in objects if _older(o, cutoff)]
        elif end.done_at is not None and end.done_at < cutoff:
            stale += [o.key for o in objects]
    deleted = 0
    try:
        for key in stale:
            if deleted >= limit:
                break
            if await _delete_or_skip(store, key, "render output"):
                deleted += 1
    except StorageUnavailable as e:
        log.warning("render output deletion stopped, object storage unavailable: %s", e)
    if deleted:
        log.info("deleted %d stale render outputs (first %s)", deleted, stale[0])
    return deleted


def _job_of(key: str) -> UUID | None:
    """The job id in ``renders/{job_id}/...``; None for a key of another shape (left alone)."""
    parts = key[len(SEGMENTS_PREFIX) :].split("/", 1)
    if len(parts) != 2:
        return None
    try:
        return UUID(parts[0])
    except ValueError:
        return None


def _older(obj: ObjectInfo, cutoff: datetime) -> bool:
    return obj.last_modified is not None and obj.last_modified < cutoff


async def reap_replicas(db: Database, store: ObjectStore, cutoff: datetime, limit: int) -> int:
    """Delete up to ``limit`` replicas no job used since ``cutoff``: objects, then rows.

    Then up to ``limit`` replica objects older than ``cutoff`` that no row names (a build whose
    job failed before it was recorded, a project deleted from the catalog). Counts objects.
    """
    async with db.transaction() as conn:
        idle = await cleanup.lock_idle_replicas(conn, cutoff, limit)
        deleted: list[cleanup.IdleReplica] = []
        try:
            for replica in idle:
                if await _delete_or_skip(store, replica.storage_key, "replica"):
                    deleted.append(replica)
        except StorageUnavailable as e:
            log.warning("replica deletion stopped, object storage unavailable: %s", e)
        await cleanup.delete_replicas(conn, deleted)
    for replica in deleted:
        log.info(
            "replica %s deleted (project %s version %d)",
            replica.storage_key,
            replica.saved_project_id,
            replica.project_version,
        )
    return len(deleted) + await _reap_unrecorded_replicas(db, store, cutoff, limit)


async def _reap_unrecorded_replicas(
    db: Database, store: ObjectStore, cutoff: datetime, limit: int
) -> int:
    """Replica objects no row names. Kept while a job of the version in their key is live (its
    node builds at that very key), and looked at again just before deletion: a build uploaded
    since the listing is younger than ``cutoff`` and stays."""
    deleted = 0
    try:
        old = [o.key for o in await store.list_prefix(REPLICAS_PREFIX) if _older(o, cutoff)]
        if not old:
            return 0
        in_use = await cleanup.replica_keys_in_use(db, [(k, *_replica_of(k)) for k in old])
        for key in old:
            if deleted >= limit:
                break
            if key in in_use:
                continue
            try:
                current = await store.stat(key)
            except StorageUnavailable:
                raise
            except StorageError as e:
                log.warning("unrecorded replica %s not looked at, storage refused: %s", key, e)
                continue
            if current is None or not _older(current, cutoff):
                continue
            if await _delete_or_skip(store, key, "unrecorded replica"):
                deleted += 1
                log.info("replica %s deleted: no replica row names it", key)
    except StorageError as e:
        log.warning("unrecorded replicas not reaped, object storage failed: %s", e)
    return deleted


def _replica_of(key: str) -> tuple[UUID | None, int | None]:
    """(project, version) of ``replicas/{project}/{version}.aep``; (None, None) otherwise."""
    parts = key[len(REPLICAS_PREFIX) :].split("/")
    if len(parts) != 2 or not parts[1].endswith(".aep"):
        return None, None
    try:
        project, version = UUID(parts[0]), int(parts[1].removesuffix(".aep"))
    except ValueError:
        return None, None
    return (project, version) if 1 <= version <= INT4.high else (None, None)  # an int4 column


def retention_tasks(
    db: Database, store: ObjectStore, config: Callable[[], Config]
) -> list[ReapTask]:
    """The Reaper's object-storage tasks: due exports, stale segments, idle replicas.

    Batch size and grace periods are read from ``config()`` every round (SIGHUP applies).
    """

    def limits() -> tuple[int, timedelta, timedelta]:
        cfg = config()
        batch = cfg.exports.reap_batch_size
        segment_grace = timedelta(hours=cfg.jobs.segment_grace_hours)
        replica_grace = timedelta(days=cfg.jobs.replica_grace_days)
        if batch < 1 or segment_grace <= timedelta(0) or replica_grace <= timedelta(0):
            raise ValueError("need reap_batch_size >= 1 and positive grace periods")
        return batch, segment_grace, replica_grace

    limits()  # refuse nonsense at start-up, not a minute later

    async def due_exports(now: datetime) -> int:
        batch, _, _ = limits()
        return await reap_due_exports(db, store, now, batch)

    async def segments(now: datetime) -> int:
        batch, grace, _ = limits()
        return await reap_segments(db, store, now - grace, batch * 10)

    async def replicas(now: datetime) -> int:
        batch, _, grace = limits()
        return await reap_replicas(db, store, now - grace, batch)

    return [
        ReapTask("exports_expired", due_exports),
        ReapTask("render_segments", segments),
        ReapTask("replicas", replicas),
    ]
