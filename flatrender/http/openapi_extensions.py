"""What the served OpenAPI document adds on top of the contract: the ``Error`` schema and the
error responses, the schemas and paths of the service extensions (catalog, billing,
entitlements, DESIGN §5), the node protocol schemas (DESIGN §4), ``GET /openapi.json`` and the
``x-websockets`` description. :mod:`flatrender.http.openapi` decides where they go.
"""

from __future__ import annotations

from typing import Any

from flatrender.domain import entitlements

Json = dict[str, Any]


def ref(kind: str, name: str) -> Json:
    return {"$ref": f"#/components/{kind}/{name}"}


def json_content(schema: Json) -> Json:
    return {"application/json": {"schema": schema}}


def object_schema(properties: Json, required: list[str]) -> Json:
    return {"type": "object", "required": required, "properties": properties}


def extra_schemas() -> Json:
    uuid = {"type": "string", "format": "uuid"}
    int64 = {"type": "integer", "format": "int64"}
    error_body = object_schema(
        {
            "code": {"type": "string", "pattern": "^[a-z][a-z0-9_]*$"},
            "message": {"type": "string", "description": "For a person to read."},
            "details": {"type": "object", "additionalProperties": True},
        },
        ["code", "message"],
    )
    scene = object_schema(
        {
            "scene_key": {"type": "string"},
            "start_frame": {"type": "integer", "minimum": 0},
            "end_frame": {"type": "integer", "minimum": 0},
        },
        ["scene_key", "start_frame", "end_frame"],
    )
    project_fields = {
        "owner_user_id": uuid,
        "name": {"type": "string"},
        "template_md5": {"type": "string"},
        "template_url": {"type": "string"},
        "ae_version": {"type": "string"},
        "frame_rate": {"type": "integer", "minimum": 1},
        "total_frames": {"type": "integer", "minimum": 1},
        "duration_sec": {"type": "number", "minimum": 0},
        "has_voiceover": {"type": "boolean"},
        "scenes": {"type": "array", "items": ref("schemas", "CatalogScene")},
    }
    entitled = {
        "type": "array",
        "items": {"type": "string", "enum": list(entitlements.ENTITLEMENTS)},
        "description": "Price types besides Cash the user may submit renders with; sorted in"
        " answers (a request's duplicates collapse).",
    }
    read_only = {
        "saved_project_id": {**uuid, "readOnly": True},
        "version": {
            "type": "integer",
            "minimum": 1,
            "readOnly": True,
            "description": "Bumps when template_md5 changes.",
        },
        "updated_at": {"type": "string", "format": "date-time", "readOnly": True},
    }
    return {
        "Error": object_schema({"error": error_body}, ["error"]),
        "CatalogScene": scene,
        "CatalogProject": object_schema(
            {**read_only, **project_fields},
            [*read_only, *(name for name in project_fields if name != "has_voiceover")],
        ),
        "BillingAccount": object_schema(
            {"user_id": uuid, "balance_minor": int64, "entitlements": entitled},
            ["user_id", "balance_minor", "entitlements"],
        ),
        "BillingEntitlements": object_schema({"entitlements": entitled}, ["entitlements"]),
        "BillingCredit": object_schema({"amount_minor": {**int64, "minimum": 1}}, ["amount_minor"]),
        "RenderNodeRegistered": {
            "allOf": [
                ref("schemas", "RenderNode"),
                object_schema(
                    {
                        "node_secret": {
                            "type": "string",
                            "description": "hex(HMAC-SHA256(node_master_key, str(node_id)));"
                            " its UTF-8 bytes sign the node's /internal requests.",
                        }
                    },
                    ["node_secret"],
                ),
            ]
        },
        "NodeHeartbeatRequest": {
            "allOf": [
                ref("schemas", "NodeHeartbeat"),
                {
                    "type": "object",
                    "properties": {
                        "acked_command_ids": {
                            "type": "array",
                            "items": uuid,
                            "description": "Pending commands the node has taken; a command is"
                            " repeated in every answer until acknowledged.",
                        }
                    },
                },
            ]
        },
    }


def error_response(description: str, code: str) -> Json:
    example = {"error": {"code": code, "message": description, "details": {}}}
    return {
        "description": description,
        "content": {"application/json": {"schema": ref("schemas", "Error"), "example": example}},
    }


def error_responses() -> Json:
    return {
        "MalformedJson": error_response("The body is not JSON.", "malformed_json"),
        "Unauthorized": error_response("Missing or invalid token.", "unauthorized"),
        "BadSignature": error_response(
            "Bad, expired or malformed X-Node-Signature (code unauthorized), or one already"
            " accepted within the skew window (code replayed): sign each request anew.",
            "unauthorized",
        ),
        "TooManySignedRequests": error_response(
            "The node sent more signed requests within the skew window than the daemon"
            " remembers for one node; retry later.",
            "too_many_requests",
        ),
        "Forbidden": error_response("Not allowed for this caller.", "forbidden"),
        "PriceTypeNotAllowed": error_response(
            "Not allowed for this caller (`forbidden`), or a user asked for a price type its"
            " account does not hold, or for `Snapshot` (`price_type_not_allowed`, details"
            " `price_type`); nothing was written.",
            "price_type_not_allowed",
        ),
        "TooManySnapshots": {
            **error_response(
                "The user already has `[snapshots] max_live_per_user` snapshots rendering;"
                " nothing was written. Retry after `Retry-After` seconds.",
                "too_many_snapshots",
            ),
            "headers": {
                "Retry-After": {
                    "description": "Seconds to wait before asking again.",
                    "schema": {"type": "integer", "minimum": 1},
                }
            },
        },
        "NotFound": error_response("No such resource.", "not_found"),
        "Conflict": error_response("Not possible in the current state.", "conflict"),
        "StaleAssignment": error_response(
            "The range is no longer assigned to this node; drop the work.", "stale_assignment"
        ),
        "InsufficientBalance": error_response(
            "The balance does not cover the price.", "insufficient_balance"
        ),
        "ValidationFailed": error_response("Invalid parameters or body.", "validation_failed"),
        "StorageError": error_response(
            "Object storage refused the operation (e.g. access denied); nothing was lost.",
            "storage_error",
        ),
        "ServiceUnavailable": error_response(
            "Object storage or database unavailable; retry later.", "service_unavailable"
        ),
    }


def _service_operation(summary: str, responses: Json, **extra: Any) -> Json:
    return {
        "tags": ["Admin"],
        "summary": summary,
        "security": [{"ServiceToken": []}],
        **extra,
        "responses": responses,
    }


def path_parameter(name: str) -> Json:
    schema = {"type": "string", "format": "uuid"}
    return {"name": name, "in": "path", "required": True, "schema": schema}


def extension_paths() -> Json:
    project = json_content(ref("schemas", "CatalogProject"))
    account = {"description": "OK", "content": json_content(ref("schemas", "BillingAccount"))}
    credit = json_content(ref("schemas", "BillingCredit"))
    entitled = json_content(ref("schemas", "BillingEntitlements"))
    in_project = [path_parameter("saved_project_id")]
    in_account = [path_parameter("user_id")]
    return {
        "/catalog/projects/{saved_project_id}": {
            "get": _service_operation(
                "Read a catalog project",
                {"200": {"description": "OK", "content": project}},
                parameters=in_project,
            ),
            "put": _service_operation(
                "Create or replace a catalog project (version bumps when template_md5 changes)",
                {"200": {"description": "Stored", "content": project}},
                parameters=in_project,
                requestBody={"required": True, "content": project},
            ),
        },
        "/billing/accounts/{user_id}": {
            "get": _service_operation(
                "Read a user's balance and entitlements", {"200": account}, parameters=in_account
            ),
        },
        "/billing/accounts/{user_id}/credit": {
            "post": _service_operation(
                "Credit a user's balance",
                {"200": account},
                parameters=in_account,
                requestBody={"required": True, "content": credit},
            ),
        },
        "/billing/accounts/{user_id}/entitlements": {
            "put": _service_operation(
                "Replace a user's entitlements (unknown value: 422 naming `$.entitlements[i]`)",
                {"200": account},
                parameters=in_account,
                requestBody={"required": True, "content": entitled},
            ),
        },
        "/openapi.json": {
            "get": {
                "tags": ["Meta"],
                "summary": "This document (no authentication)",
                "security": [],
                "responses": {
                    "200": {"description": "OK", "content": json_content({"type": "object"})}
                },
            }
        },
    }


def websockets() -> Json:
    return {
        "/ws/v1/render/{job_id}": {
            "summary": "Live progress of a render job",
            "parameters": [
                path_parameter("job_id"),
                {
                    "name": "access_token",
                    "in": "query",
                    "required": False,
                    "schema": {"type": "string"},
                    "description": "Token, when no `Authorization: Bearer` header can be sent.",
                },
            ],
            "security": [{"BearerAuth": []}, {"ServiceToken": []}],
            "messages": {
                "schema": ref("schemas", "RenderProgress"),
                "description": "On connect one RenderProgress snapshot, then one per change"
                " (coalesced, at most 10 a second), then a final one in a terminal step"
                " (Completed, Failed, Cancelled), then close 1000.",
                "max_per_second": 10,
            },
            "close_codes": {
                "1000": "The job reached a terminal step; the last message was final.",
                "1001": "The orchestrator is shutting down; reconnect.",
                "1013": "The client read too slowly and was dropped; reconnect to resync.",
                "1008": "The client sent too many messages (it has none to send).",
                "4401": "Missing or invalid token, or the token expired (or a reload revoked it)"
                " while watching.",
                "4404": "No such job, or it belongs to another user (indistinguishable).",
            },
        },
        "/ws/v1/nodes": {
            "summary": "Live status of the render nodes (admins and services)",
            "parameters": [
                {
                    "name": "access_token",
                    "in": "query",
                    "required": False,
                    "schema": {"type": "string"},
                    "description": "Token, when no `Authorization: Bearer` header can be sent.",
                },
            ],
            "security": [{"BearerAuth": []}, {"ServiceToken": []}],
            "messages": {
                "schema": {
                    "type": "object",
                    "properties": {
                        "type": {"type": "string", "enum": ["snapshot", "changes"]},
                        "nodes": {
                            "type": "array",
                            "items": {
                                "type": "object",
                                "properties": {
                                    "id": {"type": "string", "format": "uuid"},
                                    "name": {"type": "string"},
                                    "status": {"type": "string"},
                                },
                            },
                        },
                    },
                },
                "description": "On connect a snapshot of every node (id, name, status), then"
                " batches of status changes (id, latest status), at most 10 a second; a change"
                " may repeat what the snapshot said.",
                "max_per_second": 10,
            },
            "close_codes": {
                "1001": "The orchestrator is shutting down; reconnect.",
                "1013": "The client read too slowly and was dropped; reconnect to resync.",
                "1008": "The client sent too many messages (it has none to send).",
                "4401": "Missing or invalid token, or the token expired while watching.",
                "4403": "Not an administrator.",
            },
        },
    }
