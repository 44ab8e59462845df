"""Node software updates (issue 3): list them, queue a rollout. Admin JWT or service token only.

Publishing is an operator command (``flatrender updates publish``), not an API call: the file goes
straight to object storage. A rollout request only queues nodes, in one transaction; the
RolloutActor sends the commands, stage by stage, as each node is idle (``domain.rollout``).
"""

from __future__ import annotations

from typing import Any
from uuid import UUID

import attrs
from quart import Blueprint

from flatrender.http.auth import require_admin
from flatrender.http.codec import unstructure_datetime
from flatrender.http.common import body, caller, path_uuid, state
from flatrender.http.errors import not_found, unprocessable
from flatrender.persistence import updates

bp = Blueprint("node_updates", __name__)

# More than a fleet will ever have, small enough to keep one request's transaction short.
MAX_NODES = 10_000


@attrs.frozen
class RolloutIn:
    # Optional here so that a missing list is a 422 that says so, like an empty one.
    node_ids: list[UUID] | None = None


def update_json(update: updates.NodeUpdate) -> dict[str, Any]:
    """``NodeUpdate`` of the contract plus ``halted_reason`` (null unless a rollout halted)."""
    return {
        "id": str(update.id),
        "update_file_name": update.update_file_name,
        "update_number": update.update_number,
        "description": update.description,
        "target_ae_version": update.target_ae_version,
        "in_update_queue": update.in_update_queue,
        "rolled_out_to_node_ids": [str(n) for n in update.rolled_out_to_node_ids],
        "create_date": unstructure_datetime(update.create_date),
        "halted_reason": update.halted_reason,
    }


@bp.get("/v1/node-updates")
async def list_updates() -> dict[str, Any]:
    require_admin(caller())
    return {"data": [update_json(u) for u in await updates.list_updates(state().db)]}


@bp.post("/v1/node-updates/<update_id>/rollout")
async def rollout(update_id: str) -> tuple[dict[str, Any], int]:
    """202 ``{update_id, queued, skipped}``: ``queued`` lists the nodes now waiting for the
    update; ``skipped`` maps the others to their status (``Confirmed``: they have it, ``Sent``:
    installing it). Unknown node ids are a 422 listing them, and nothing is queued."""
    require_admin(caller())
    uid = path_uuid("update_id", update_id)
    node_ids = (await body(RolloutIn)).node_ids
    if not node_ids:
        raise unprocessable(
            "node_ids must list at least one node",
            [{"field": "$.node_ids", "message": "must be a non-empty array of node ids"}],
        )
    if len(node_ids) > MAX_NODES:
        raise unprocessable(
            f"at most {MAX_NODES} nodes per request",
            [{"field": "$.node_ids", "message": f"must hold at most {MAX_NODES} ids"}],
        )
    try:
        result = await updates.queue_rollout(state().db, uid, node_ids)
    except updates.UpdateNotFound:
        raise not_found("node update", uid) from None
    except updates.UnknownNodes as e:
        unknown = {str(n) for n in e.node_ids}
        raise unprocessable(
            f"unknown node ids: {', '.join(sorted(unknown))}",
            [
                {"field": f"$.node_ids[{i}]", "message": f"no node {n}"}
                for i, n in enumerate(map(str, node_ids))
                if n in unknown
            ],
        ) from None
    actors = state().actors
    if actors is not None and result.queued:
        actors.rollout.wake()  # send to idle nodes now rather than on the next tick
    return {
        "update_id": str(uid),
        "queued": [str(n) for n in result.queued],
        "skipped": {str(n): status for n, status in result.skipped.items()},
    }, 202
