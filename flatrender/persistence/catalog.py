"""Catalog projects and their scenes."""

from __future__ import annotations

from uuid import UUID

from flatrender.domain.catalog import Project, ProjectSpec, Scene
from flatrender.persistence.db import Connection, Database

UPSERT_PROJECT = """
INSERT INTO catalog_projects AS p (saved_project_id, owner_user_id, name, template_md5,
    template_url, ae_version, frame_rate, total_frames, duration_sec, has_voiceover)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)
ON CONFLICT (saved_project_id) DO UPDATE SET
    owner_user_id = EXCLUDED.owner_user_id, name = EXCLUDED.name,
    template_md5 = EXCLUDED.template_md5, template_url = EXCLUDED.template_url,
    ae_version = EXCLUDED.ae_version, frame_rate = EXCLUDED.frame_rate,
    total_frames = EXCLUDED.total_frames, duration_sec = EXCLUDED.duration_sec,
    has_voiceover = EXCLUDED.has_voiceover,
    -- A new template is a new version: replicas and cached snapshots of the old one go stale.
    version = p.version + (p.template_md5 IS DISTINCT FROM EXCLUDED.template_md5)::int,
    updated_at = now()
"""
DELETE_SCENES = "DELETE FROM catalog_scenes WHERE saved_project_id = $1"
INSERT_SCENE = """
INSERT INTO catalog_scenes (saved_project_id, scene_key, start_frame, end_frame)
VALUES ($1, $2, $3, $4)
"""
SELECT_PROJECT = "SELECT * FROM catalog_projects WHERE saved_project_id = $1"
SELECT_SCENES = """
SELECT scene_key, start_frame, end_frame FROM catalog_scenes
WHERE saved_project_id = $1 ORDER BY start_frame, scene_key
"""


async def upsert(db: Database, saved_project_id: UUID, spec: ProjectSpec) -> Project:
    """Create or replace a project and its scenes in one transaction."""
    async with db.transaction() as conn:
        await conn.execute(
            UPSERT_PROJECT,
            saved_project_id,
            spec.owner_user_id,
            spec.name,
            spec.template_md5,
            spec.template_url,
            spec.ae_version,
            spec.frame_rate,
            spec.total_frames,
            spec.duration_sec,
            spec.has_voiceover,
        )
        await conn.execute(DELETE_SCENES, saved_project_id)
        await conn.executemany(
            INSERT_SCENE,
            [(saved_project_id, s.scene_key, s.start_frame, s.end_frame) for s in spec.scenes],
        )
        project = await _read(conn, saved_project_id)
    assert project is not None
    return project


async def get(db: Database, saved_project_id: UUID) -> Project | None:
    async with db.connection() as conn:
        return await _read(conn, saved_project_id)


async def _read(conn: Connection, saved_project_id: UUID) -> Project | None:
    row = await conn.fetchrow(SELECT_PROJECT, saved_project_id)
    if row is None:
        return None
    scenes = [Scene(**dict(r)) for r in await conn.fetch(SELECT_SCENES, saved_project_id)]
    return Project(
        saved_project_id=row["saved_project_id"],
        owner_user_id=row["owner_user_id"],
        name=row["name"],
        template_md5=row["template_md5"],
        template_url=row["template_url"],
        ae_version=row["ae_version"],
        frame_rate=row["frame_rate"],
        total_frames=row["total_frames"],
        duration_sec=row["duration_sec"],
        has_voiceover=row["has_voiceover"],
        version=row["version"],
        scenes=scenes,
        created_at=row["created_at"],
        updated_at=row["updated_at"],
    )
