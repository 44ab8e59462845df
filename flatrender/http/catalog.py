"""Catalog extension (DESIGN §5): the main app upserts saved projects; service token only."""

from __future__ import annotations

from typing import Any

from quart import Blueprint

from flatrender.domain.catalog import Project, ProjectSpec, spec_errors
from flatrender.http.auth import require_service
from flatrender.http.codec import dump
from flatrender.http.common import body, caller, path_uuid, state
from flatrender.http.errors import not_found, unprocessable
from flatrender.persistence import catalog

bp = Blueprint("catalog", __name__)


@bp.put("/v1/catalog/projects/<saved_project_id>")
async def put_project(saved_project_id: str) -> tuple[dict[str, Any], int]:
    require_service(caller())
    project_id = path_uuid("saved_project_id", saved_project_id)
    spec = await body(ProjectSpec)
    errors = spec_errors(spec)
    if errors:
        raise unprocessable("the project is invalid", errors)
    project = await catalog.upsert(state().db, project_id, spec)
    return project_json(project), 200


@bp.get("/v1/catalog/projects/<saved_project_id>")
async def get_project(saved_project_id: str) -> dict[str, Any]:
    require_service(caller())
    project_id = path_uuid("saved_project_id", saved_project_id)
    project = await catalog.get(state().db, project_id)
    if project is None:
        raise not_found("project", project_id)
    return project_json(project)


def project_json(project: Project) -> dict[str, Any]:
    data: dict[str, Any] = dump(project)
    data.pop("created_at", None)
    return data
