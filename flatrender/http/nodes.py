"""Node pool administration (issue 3): admin JWT or service token only.

Handlers validate, then read PostgreSQL or ask the node's actor, which alone changes a node's
status and commits before it answers (DESIGN §1, §2.1). An unknown node is 404 on every route;
a fleet that is not running (start-up, restart, overloaded actor) is 503 ``service_unavailable``.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable
from datetime import datetime
from typing import Any
from uuid import UUID, uuid4

import attrs
from quart import Blueprint, request

from flatrender.actors import node
from flatrender.actors.fleet import Fleet, NodeUnknown
from flatrender.actors.mailbox import ActorUnavailable, Reply
from flatrender.domain import node_status as ns
from flatrender.domain import signing
from flatrender.domain.bounds import INT4, Int4
from flatrender.domain.model import CommandType, HealthSample, NodeCommand, NodeStatus
from flatrender.http.auth import require_admin
from flatrender.http.codec import converter, dump, parse_json, pick, structure
from flatrender.http.common import body, caller, path_uuid, query_int, state
from flatrender.http.errors import ApiError, conflict, not_found, unprocessable
from flatrender.http.node_bodies import Check
from flatrender.persistence import health, nodes

bp = Blueprint("nodes", __name__)

Errors = list[dict[str, str]]

MAX_TEXT = 255
MAX_REASON = 2000
HISTORY_LIMIT = 1000
CRASHES_LIMIT = 200
STATUSES = tuple(s.value for s in NodeStatus)

RENDER_NODE = (
    "id", "name", "region", "node_ip", "worker_port", "status", "node_kind", "owner_user_id",
    "current_ae_version", "node_agent_version", "ram_gb", "cpu_cores", "priority", "is_active",
    "accepts_new_jobs", "last_heartbeat_at", "current_job_id", "last_cpu_pct",
    "last_ram_available_mb", "ae_running", "cache_used_gb", "cached_template_count",
    "lifetime_task_count", "lifetime_crash_count", "consecutive_failures",
)  # fmt: skip
DETAIL = (
    *RENDER_NODE,
    "available_ae_versions",
    "cached_template_md5s",
    "last_maintenance_at",
    "next_maintenance_at",
    "maintenance_reason",
)
# Not nullable in the contract: a node that never sent a heartbeat or had maintenance omits them.
UNTIL_KNOWN = frozenset({"last_heartbeat_at", "last_maintenance_at"})


# ------------------------------------------------------------------ bodies


@attrs.frozen
class NodeIn:
    """``RenderNodeCreate``; the same fields as `nodes.NewNode`."""

    name: str
    region: str
    node_ip: str
    worker_port: Int4
    current_ae_version: str
    ram_gb: Int4 = 0
    cpu_cores: Int4 = 0
    node_kind: str = "Shared"
    owner_user_id: UUID | None = None
    priority: Int4 = 0

    def errors(self) -> Errors:
        errors: Errors = []
        for name in ("name", "region", "node_ip", "current_ae_version", "node_kind"):
            errors += _text(name, getattr(self, name))
        if not any(e["field"] == "$.node_ip" for e in errors):
            try:
                ipaddress.ip_address(self.node_ip)
            except ValueError:
                errors.append(_error("node_ip", f"{self.node_ip!r} is not an IP address"))
        errors += _in_range("worker_port", self.worker_port, 1, 65535)
        errors += _in_range("ram_gb", self.ram_gb, 0, INT4.high)
        errors += _in_range("cpu_cores", self.cpu_cores, 0, INT4.high)
        return errors


@attrs.frozen
class PatchIn:
    """The PATCH body; which keys were present is read from the raw JSON object."""

    priority: Int4 | None = None
    is_active: bool | None = None
    accepts_new_jobs: bool | None = None
    node_kind: str | None = None
    owner_user_id: UUID | None = None
    next_maintenance_at: datetime | None = None
    maintenance_reason: str | None = None


NOT_NULLABLE = ("priority", "is_active", "accepts_new_jobs", "node_kind")


def node_patch(data: Any) -> node.NodePatch:
    """Absent keys leave a field unchanged; ``null`` clears the nullable ones."""
    value = structure(data, PatchIn)
    errors = [_error(k, "must not be null") for k in NOT_NULLABLE if k in data and data[k] is None]
    if value.node_kind is not None:
        errors += _text("node_kind", value.node_kind)
    if value.maintenance_reason is not None:
        errors += _text("maintenance_reason", value.maintenance_reason, MAX_REASON, blank=True)
    times = Check()  # a time the database can store, bounded as a node's reported ones
    times.time("next_maintenance_at", value.next_maintenance_at)
    errors += times.errors
    if errors:
        raise unprocessable("the patch is invalid", errors)
    reason = value.maintenance_reason
    return node.NodePatch(
        priority=value.priority,
        is_active=value.is_active,
        accepts_new_jobs=value.accepts_new_jobs,
        node_kind=value.node_kind,
        owner_user_id=value.owner_user_id if "owner_user_id" in data else ns.UNSET,
        next_maintenance_at=(
            value.next_maintenance_at if "next_maintenance_at" in data else ns.UNSET
        ),
        # NodePatch reads None as "unchanged": a cleared reason is stored as "".
        maintenance_reason="" if "maintenance_reason" in data and reason is None else reason,
    )


def _error(field: str, message: str) -> dict[str, str]:
    return {"field": f"$.{field}", "message": message}


def _text(field: str, value: str, max_len: int = MAX_TEXT, *, blank: bool = False) -> Errors:
    if not blank and not value.strip():
        return [_error(field, "must not be empty")]
    if len(value) > max_len:
        return [_error(field, f"must be at most {max_len} characters")]
    return []


def _in_range(field: str, value: int, low: int, high: int) -> Errors:
    return [] if low <= value <= high else [_error(field, f"must be between {low} and {high}")]


# ------------------------------------------------------------------ serialisation


def node_json(row: nodes.NodeRow, *, detail: bool = False) -> dict[str, Any]:
    data = dump(row)
    data["cached_template_count"] = len(row.cached_template_md5s)
    data["maintenance_reason"] = row.maintenance_reason or None
    return pick(data, DETAIL if detail else RENDER_NODE, absent_when_none=UNTIL_KNOWN)


# ------------------------------------------------------------------ plumbing


def fleet() -> Fleet:
    actors = state().actors
    if actors is None:
        raise _unavailable()
    return actors.fleet


def _unavailable() -> ApiError:
    return ApiError(503, "service_unavailable", "the node fleet is not available, retry")


async def call_node(node_id: UUID, make: Callable[[Reply], Any]) -> Any:
    try:
        return await fleet().call(node_id, make)
    except NodeUnknown:
        raise not_found("node", node_id) from None
    except ActorUnavailable:
        raise _unavailable() from None


async def existing(node_id: UUID) -> nodes.NodeRow:
    row = await nodes.get(state().db, node_id)
    if row is None:
        raise not_found("node", node_id)
    return row


def admin_node_id(value: str) -> UUID:
    require_admin(caller())
    return path_uuid("node_id", value)


def _query_time(name: str) -> datetime | None:
    text = request.args.get(name, "").strip()
    if not text:
        return None
    # An unescaped "+" of an offset arrives as a space.
    text = re.sub(r" (\d\d:?\d\d)$", r"+\1", text)
    try:
        return converter.structure(text, datetime)
    except ValueError as e:
        raise unprocessable(f"query parameter {name} is invalid", [_param(name, str(e))]) from None


def _query_limit(default: int, high: int) -> int:
    return min(max(query_int("limit", default), 1), high)


def _param(name: str, message: str) -> dict[str, str]:
    return {"field": name, "message": message}


# ------------------------------------------------------------------ endpoints


@bp.get("/v1/nodes")
async def list_nodes() -> dict[str, Any]:
    require_admin(caller())
    region = request.args.get("region") or None
    status = request.args.get("status") or None
    if status is not None and status not in STATUSES:
        allowed = ", ".join(STATUSES)
        raise unprocessable(
            "query parameter status is invalid", [_param("status", f"must be one of {allowed}")]
        )
    rows = await nodes.list_nodes(state().db, region, status)
    return {"data": [node_json(row) for row in rows]}


@bp.post("/v1/nodes")
async def register_node() -> tuple[dict[str, Any], int, dict[str, str]]:
    require_admin(caller())
    spec = await body(NodeIn)
    errors = spec.errors()
    if errors:
        raise unprocessable("the node is invalid", errors)
    node_id = uuid4()
    try:
        row = await fleet().register(node_id, nodes.NewNode(**attrs.asdict(spec, recurse=False)))
    except nodes.NodeNameTaken:
        raise conflict(
            "node_name_taken", f"a node named {spec.name!r} already exists", name=spec.name
        ) from None
    except ActorUnavailable:
        raise _unavailable() from None
    secret = signing.node_secret(state().config.auth.node_master_key, node_id)
    return {**node_json(row), "node_secret": secret}, 201, {"Location": f"/v1/nodes/{node_id}"}


@bp.get("/v1/nodes/<node_id>")
async def get_node(node_id: str) -> dict[str, Any]:
    return node_json(await existing(admin_node_id(node_id)), detail=True)


@bp.patch("/v1/nodes/<node_id>")
async def patch_node(node_id: str) -> dict[str, Any]:
    nid = admin_node_id(node_id)
    raw = await request.get_data(as_text=False)
    assert isinstance(raw, bytes)
    patch = node_patch(parse_json(raw))
    await call_node(nid, lambda reply: node.Patch(patch, reply))
    # A superset of RenderNode: the maintenance fields an admin patches are shown too.
    return node_json(await existing(nid), detail=True)


async def enqueue(node_id: str, type_: CommandType) -> NodeCommand:
    nid = admin_node_id(node_id)
    command = await call_node(nid, lambda reply: node.Enqueue(type_, {}, reply))
    assert isinstance(command, NodeCommand)  # only UpdateSoftware may be refused
    return command


@bp.post("/v1/nodes/<node_id>/restart")
async def restart_node(node_id: str) -> tuple[dict[str, Any], int]:
    command = await enqueue(node_id, CommandType.RESTART)
    return {"command_id": str(command.id)}, 202


@bp.post("/v1/nodes/<node_id>/close-ae")
async def close_ae(node_id: str) -> tuple[str, int]:
    await enqueue(node_id, CommandType.CLOSE_AE)
    return "", 204


@bp.post("/v1/nodes/<node_id>/release")
async def release_node(node_id: str) -> tuple[str, int]:
    await enqueue(node_id, CommandType.RELEASE)
    return "", 204


@bp.get("/v1/nodes/<node_id>/health")
async def node_health(node_id: str) -> dict[str, Any]:
    nid = admin_node_id(node_id)
    sample = await live_sample(nid)
    if sample is None:
        await existing(nid)
        sample = await health.latest(state().db, nid)
    if sample is None:
        raise ApiError(404, "not_found", "no heartbeat recorded yet", {"id": str(nid)})
    return dump(sample)  # type: ignore[no-any-return]


async def live_sample(node_id: UUID) -> HealthSample | None:
    """The actor's last heartbeat, fresher than the batched history; None when it cannot say."""
    actors = state().actors
    if actors is None:
        return None
    try:
        view = await actors.fleet.call(node_id, node.Inspect, within_sec=1.0)
    except (NodeUnknown, ActorUnavailable):
        return None
    assert isinstance(view, node.NodeView)
    return view.last_sample


@bp.get("/v1/nodes/<node_id>/health/history")
async def node_health_history(node_id: str) -> dict[str, Any]:
    """Samples with ``from <= recorded_at < to``, newest first, at most ``limit`` (≤ 1000)."""
    nid = admin_node_id(node_id)
    since, until = _query_time("from"), _query_time("to")
    if since is not None and until is not None and since > until:
        raise unprocessable("from is after to", [_param("from", "must not be after to")])
    limit = _query_limit(HISTORY_LIMIT, HISTORY_LIMIT)
    await existing(nid)
    samples = await health.history(state().db, nid, since, until, limit)
    return {"data": [dump(s) for s in samples]}


@bp.get("/v1/nodes/<node_id>/crashes")
async def node_crashes(node_id: str) -> dict[str, Any]:
    nid = admin_node_id(node_id)
    limit = _query_limit(CRASHES_LIMIT, HISTORY_LIMIT)
    await existing(nid)
    crashes = await nodes.list_crashes(state().db, nid, limit)
    return {"data": [dump(c) for c in crashes]}
