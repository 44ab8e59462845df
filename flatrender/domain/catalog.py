"""The catalog's view of a saved project: what a render or a snapshot needs to know about it."""

from __future__ import annotations

from datetime import datetime
from uuid import UUID

import attrs

from flatrender.domain.bounds import INT4, Int4

FRAME_RATES = (24, 25, 30, 60)
# A render resamples the duration at up to 60 fps: its frame numbers must fit an integer column.
MAX_DURATION_SEC = INT4.high // max(FRAME_RATES)


@attrs.frozen
class Scene:
    scene_key: str
    start_frame: Int4
    end_frame: Int4


@attrs.frozen
class ProjectSpec:
    """What the main app sends on upsert."""

    owner_user_id: UUID
    name: str
    template_md5: str
    template_url: str
    ae_version: str
    frame_rate: Int4
    total_frames: Int4
    duration_sec: float
    scenes: list[Scene]
    has_voiceover: bool = False


@attrs.frozen
class Project:
    saved_project_id: UUID
    owner_user_id: UUID
    name: str
    template_md5: str
    template_url: str
    ae_version: str
    frame_rate: int
    total_frames: int
    duration_sec: float
    has_voiceover: bool
    version: int
    scenes: list[Scene]
    created_at: datetime
    updated_at: datetime

    def scene(self, scene_key: str) -> Scene | None:
        return next((s for s in self.scenes if s.scene_key == scene_key), None)


def spec_errors(spec: ProjectSpec) -> list[dict[str, str]]:
    """Everything wrong with a spec, as ``{"field", "message"}`` entries (empty when valid)."""
    errors: list[dict[str, str]] = []

    def bad(field: str, message: str) -> None:
        errors.append({"field": f"$.{field}", "message": message})

    for field in ("name", "template_md5", "template_url", "ae_version"):
        if not getattr(spec, field).strip():
            bad(field, "must not be empty")
    if spec.frame_rate not in FRAME_RATES:
        bad("frame_rate", f"must be one of {', '.join(map(str, FRAME_RATES))}")
    if spec.total_frames < 1:
        bad("total_frames", "must be at least 1")
    if not 0 < spec.duration_sec <= MAX_DURATION_SEC:
        bad("duration_sec", f"must be positive and at most {MAX_DURATION_SEC}")
    seen: set[str] = set()
    for i, scene in enumerate(spec.scenes):
        where = f"scenes[{i}]"
        if not scene.scene_key.strip():
            bad(f"{where}.scene_key", "must not be empty")
        if scene.scene_key in seen:
            bad(f"{where}.scene_key", f"duplicate scene_key {scene.scene_key!r}")
        seen.add(scene.scene_key)
        if scene.start_frame < 0:
            bad(f"{where}.start_frame", "must not be negative")
        if scene.end_frame < scene.start_frame:
            bad(f"{where}.end_frame", "must not be before start_frame")
        if scene.end_frame >= spec.total_frames:
            bad(f"{where}.end_frame", f"must be below total_frames ({spec.total_frames})")
    return errors
