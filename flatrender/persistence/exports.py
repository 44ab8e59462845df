"""Exports (the deliverables) and their files.

Reads for the API, the locked reads that deletion and extension start from, and the writes
they end with. Locking an export row (``FOR UPDATE``) is what serialises a delete, an
extension and the Reaper on one export: whoever comes second finds the row gone or moved.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Sequence
from datetime import datetime, timedelta
from typing import Any
from uuid import UUID, uuid5

import attrs

from flatrender.actors.merger import MergedExport
from flatrender.domain.extension import ExtensionVerdict, decide_extension
from flatrender.persistence import ledger
from flatrender.persistence.db import Connection, Database
from flatrender.persistence.jobs import JobRow


@attrs.frozen
class ExportRow:
    """An ``exports`` row (the contract's ``Export`` plus the owner and the job)."""

    id: UUID
    user_id: UUID
    job_id: UUID | None
    saved_project_id: UUID
    path: str
    image: str
    size_bytes: int
    duration_sec: float
    width: int
    height: int
    file_extension: str
    file_type: str
    render_quality: str
    create_type: str
    produce_date: datetime
    auto_delete_date: datetime


@attrs.frozen
class ExportFile:
    """An ``export_files`` row: one stored format of an export (``file_type`` mp4, png, ...)."""

    id: UUID
    export_id: UUID
    path: str
    thumbnail: str
    size_bytes: int
    file_type: str


EXPORT_FIELDS = tuple(f.name for f in attrs.fields(ExportRow))
FILE_FIELDS = tuple(f.name for f in attrs.fields(ExportFile))
_EXPORT_COLUMNS = ", ".join(EXPORT_FIELDS)
_FILE_COLUMNS = ", ".join(FILE_FIELDS)


def export_from(record: Any) -> ExportRow:
    return ExportRow(**{name: record[name] for name in EXPORT_FIELDS})


def file_from(record: Any) -> ExportFile:
    return ExportFile(**{name: record[name] for name in FILE_FIELDS})


def object_keys(export: ExportRow, files: Iterable[ExportFile]) -> list[str]:
    """Every object key the export's rows name (video, thumbnail, other formats), sorted."""
    keys = {export.path, export.image}
    for f in files:
        keys.update((f.path, f.thumbnail))
    return sorted(k for k in keys if k)


INSERT_EXPORT = """
INSERT INTO exports (id, user_id, job_id, saved_project_id, path, image, size_bytes,
    duration_sec, width, height, file_extension, file_type, render_quality, create_type,
    produce_date, auto_delete_date)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, 'mp4', 'video/mp4', $11, $12, $13, $14)
ON CONFLICT (id) DO NOTHING
"""
INSERT_FILE = """
INSERT INTO export_files (id, export_id, path, thumbnail, size_bytes, file_type)
VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (export_id, file_type) DO NOTHING
"""


async def record(
    conn: Connection, job: JobRow, export: MergedExport, now: datetime, keep: timedelta
) -> None:
    """The export row and its files (video, thumbnail), inside the job's completing transaction."""
    await conn.execute(
        INSERT_EXPORT,
        export.export_id,
        job.user_id,
        job.id,
        job.saved_project_id,
        export.video_key,
        export.thumbnail_key,
        export.size_bytes,
        export.duration_sec,
        export.width,
        export.height,
        job.quality,
        job.price_type,
        now,
        now + keep,
    )
    for kind, path, size in (
        ("mp4", export.video_key, export.size_bytes),
        ("png", export.thumbnail_key, export.thumbnail_size_bytes),
    ):
        await conn.execute(
            INSERT_FILE,
            uuid5(export.export_id, kind),
            export.export_id,
            path,
            export.thumbnail_key,
            size,
            kind,
        )


INSERT_ROW = f"""
INSERT INTO exports ({_EXPORT_COLUMNS})
VALUES ({", ".join(f"${i}" for i in range(1, len(EXPORT_FIELDS) + 1))})
"""
INSERT_FILE_ROW = f"""
INSERT INTO export_files ({_FILE_COLUMNS})
VALUES ({", ".join(f"${i}" for i in range(1, len(FILE_FIELDS) + 1))})
"""


async def insert(db: Database, rows: Sequence[ExportRow], files: Sequence[ExportFile] = ()) -> None:
    """Store exports made elsewhere (imports, tests, benchmarks) in one transaction."""
    async with db.transaction() as conn:
        await conn.executemany(INSERT_ROW, [attrs.astuple(r) for r in rows])
        if files:
            await conn.executemany(INSERT_FILE_ROW, [attrs.astuple(f) for f in files])


# ------------------------------------------------------------------ reads

LIST_EXPORTS = f"""
SELECT {_EXPORT_COLUMNS}, count(*) OVER () AS total FROM exports WHERE user_id = $1
ORDER BY produce_date DESC, id DESC LIMIT $2 OFFSET $3
"""
COUNT_EXPORTS = "SELECT count(*) FROM exports WHERE user_id = $1"


async def list_exports(
    db: Database, user_id: UUID, limit: int, offset: int
) -> tuple[list[ExportRow], int]:
    """One page of the user's exports, newest first, and how many there are in all."""
    records = await db.fetch(LIST_EXPORTS, user_id, limit, offset)
    total = int(records[0]["total"]) if records else int(await db.fetchval(COUNT_EXPORTS, user_id))
    return [export_from(r) for r in records], total


GET_EXPORT = f"SELECT {_EXPORT_COLUMNS} FROM exports WHERE id = $1"
LOCK_EXPORT = GET_EXPORT + " FOR UPDATE"
FILES_OF = f"""
SELECT {_FILE_COLUMNS} FROM export_files WHERE export_id = ANY($1::uuid[])
ORDER BY export_id, file_type
"""


async def get(db: Database | Connection, export_id: UUID) -> ExportRow | None:
    record = await db.fetchrow(GET_EXPORT, export_id)
    return None if record is None else export_from(record)


async def lock(conn: Connection, export_id: UUID) -> ExportRow | None:
    """The row, locked until the caller's transaction ends; None when it is gone."""
    record = await conn.fetchrow(LOCK_EXPORT, export_id)
    return None if record is None else export_from(record)


async def files_of(db: Database | Connection, export_ids: Sequence[UUID]) -> list[ExportFile]:
    """The files of these exports, grouped by export, formats in name order."""
    return [file_from(r) for r in await db.fetch(FILES_OF, list(export_ids))]


@attrs.frozen
class DownloadTarget:
    """What a download url needs: whose export, the key of the wanted format (if it has one)."""

    user_id: UUID
    key: str | None
    formats: tuple[str, ...]


# One round trip: download urls are the hot read (a person waits for each).
DOWNLOAD_TARGET = """
SELECT e.user_id, f.path,
       ARRAY(SELECT file_type FROM export_files WHERE export_id = e.id ORDER BY 1) AS formats
FROM exports e LEFT JOIN export_files f ON f.export_id = e.id AND f.file_type = $2
WHERE e.id = $1
"""


async def download_target(db: Database, export_id: UUID, file_type: str) -> DownloadTarget | None:
    """None when there is no such export."""
    record = await db.fetchrow(DOWNLOAD_TARGET, export_id, file_type)
    if record is None:
        return None
    return DownloadTarget(record["user_id"], record["path"], tuple(record["formats"]))


# ------------------------------------------------------------------ writes

DELETE_FILES = "DELETE FROM export_files WHERE export_id = ANY($1::uuid[])"
DELETE_EXPORTS = "DELETE FROM exports WHERE id = ANY($1::uuid[]) RETURNING id"


async def delete_rows(conn: Connection, export_ids: Sequence[UUID]) -> set[UUID]:
    """Remove the exports and their files inside the caller's transaction; returns who went."""
    ids = list(export_ids)
    await conn.execute(DELETE_FILES, ids)
    return {r["id"] for r in await conn.fetch(DELETE_EXPORTS, ids)}


LOCK_DUE = f"""
SELECT {_EXPORT_COLUMNS} FROM exports WHERE auto_delete_date <= $1 AND id <> ALL($3::uuid[])
ORDER BY auto_delete_date, id LIMIT $2 FOR UPDATE SKIP LOCKED
"""


async def lock_due(
    conn: Connection, now: datetime, limit: int, *, skip: Collection[UUID] = ()
) -> list[ExportRow]:
    """Up to ``limit`` exports whose ``auto_delete_date`` is at or before ``now``, locked,
    those in ``skip`` left out.

    Rows another transaction holds (a delete or an extension in progress) are skipped: they are
    either gone or moved when it commits, and the next round looks again.
    """
    return [export_from(r) for r in await conn.fetch(LOCK_DUE, now, limit, list(skip))]


# A day of extension is 24 hours whatever the session's zone ('1 day' follows its DST).
MOVE_DELETE_DATE = """
UPDATE exports SET auto_delete_date = auto_delete_date + $2 * interval '24 hours'
WHERE id = $1 RETURNING auto_delete_date
"""


async def move_delete_date(conn: Connection, export_id: UUID, days: int) -> datetime:
    """Push ``auto_delete_date`` by ``days``; the caller holds the row lock."""
    value = await conn.fetchval(MOVE_DELETE_DATE, export_id, days)
    assert isinstance(value, datetime)
    return value


@attrs.frozen
class Extension:
    """What came of a paid extension: on ``ALLOWED`` the new date and the balance after the
    charge; on a refusal the current date and balance (and nothing was written)."""

    verdict: ExtensionVerdict
    auto_delete_date: datetime
    balance_minor: int


class _Refused(Exception):
    def __init__(self, outcome: Extension) -> None:
        super().__init__(outcome.verdict.value)
        self.outcome = outcome


async def extend_paid(
    db: Database, owner: UUID, export_id: UUID, days: int, price_minor: int, now: datetime
) -> Extension | None:
    """Charge ``owner`` ``price_minor`` and move the export's date by ``days``, in one
    transaction, if :func:`decide_extension` allows it; None when there is no such export.

    Account lock first, then the export's: the order of every charge, so no deadlock with
    submits; concurrent extensions serialise and each is charged once, and the Reaper (export
    lock only) cannot delete what is being paid for. A refusal rolls back: it writes nothing.
    """
    try:
        async with db.transaction() as conn:
            balance = await ledger.lock_account(conn, owner)
            current = await lock(conn, export_id)
            if current is None:
                return None
            verdict = decide_extension(
                auto_delete_date=current.auto_delete_date,
                now=now,
                balance_minor=balance,
                price_minor=price_minor,
            )
            if verdict is not ExtensionVerdict.ALLOWED:
                raise _Refused(Extension(verdict, current.auto_delete_date, balance))
            if price_minor > 0:
                note = f"export extended by {days} days"
                await ledger.append(
                    conn, owner, "extension", -price_minor, export_id=export_id, note=note
                )
            moved = await move_delete_date(conn, export_id, days)
            return Extension(verdict, moved, balance - price_minor)
    except _Refused as refused:
        return refused.outcome
