"""Exports (the deliverables) and their files."""

from __future__ import annotations

from datetime import datetime, timedelta
from uuid import uuid5

from flatrender.actors.merger import MergedExport
from flatrender.persistence.db import Connection
from flatrender.persistence.jobs import JobRow

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
