"""The OpenAPI document served at ``/v1/openapi.json``.

It is derived from the contract (``contract/openapi.yaml``, kept verbatim) on first use and cached,
never maintained by hand. The derivation only adds: response descriptions the contract omits (which
is what makes the raw contract invalid OpenAPI), the ``Error`` schema and error responses, the node
protocol fields of DESIGN §4, the service extensions of DESIGN §5, ``GET /openapi.json`` itself and
an ``x-websockets`` description of the progress stream. Everything in the contract stays as it is,
so the document is a superset of the contract.

Paths: the served document sets ``servers: [{url: "/v1"}]`` and keeps every path as the contract
writes it (``/renders``, not ``/v1/renders``); the WebSocket, which lives outside ``/v1``, is
described with its full path under ``x-websockets``. :func:`contract_operations` returns the full
request paths (``/v1`` prefixed), which is what the router must serve.
"""

from __future__ import annotations

import copy
import functools
import http
from collections.abc import Iterator
from importlib import resources
from typing import Any

import yaml

__all__ = ["contract_operations", "openapi_document"]

Json = dict[str, Any]

API_PREFIX = "/v1"
HTTP_METHODS = ("get", "put", "post", "delete", "options", "head", "patch", "trace")
INTERNAL_PREFIX = "/internal/"

_SUCCESS_DESCRIPTIONS = {"200": "OK", "201": "Created", "202": "Accepted", "204": "No Content"}
# Lease fencing (DESIGN §4) applies to the node reports about an assigned range.
_FENCED_SUFFIXES = ("/frames", "/crash", "/replica-ready")
# Conflicts with the current state of the resource: a terminal job, a job that is not Failed,
# an expired export.
_STATE_CONFLICTS = {
    ("post", "/renders/{job_id}/cancel"),
    ("post", "/renders/{job_id}/retry"),
    ("post", "/exports/{export_id}/extend"),
}
_CHARGED = {
    ("post", "/renders"),
    ("post", "/snapshots"),  # free unless [pricing] price_type_factor.Snapshot is set
    ("post", "/renders/{job_id}/retry"),
    ("post", "/exports/{export_id}/extend"),
}
# A user submits Cash or a price type its account holds (DESIGN §5).
_PRICE_CHECKED = {("post", "/renders"), ("post", "/renders/{job_id}/retry")}
# At most [snapshots] max_live_per_user live snapshot jobs per user.
_CAPPED = {("post", "/snapshots")}
ENTITLEMENTS = ["Free", "Plan", "Preview", "Reseller"]


def openapi_document() -> Json:
    """The served document; a fresh deep copy, so a caller may change it freely."""
    return copy.deepcopy(_document())


def contract_operations() -> set[tuple[str, str]]:
    """``(METHOD, path)`` of every contract operation, the path as requested (``/v1/...``)."""
    return {(method.upper(), API_PREFIX + path) for method, path, _ in _operations(_contract())}


@functools.cache
def _contract() -> Json:
    text = (
        resources.files("flatrender.http").joinpath("contract", "openapi.yaml").read_text("utf-8")
    )
    loaded: Json = yaml.safe_load(text)
    return loaded


@functools.cache
def _document() -> Json:
    doc = copy.deepcopy(_contract())
    _amend_info(doc)
    doc["components"]["schemas"].update(_extra_schemas())
    doc["components"].setdefault("responses", {}).update(_error_responses())
    _add_node_protocol_fields(doc)
    _describe_snapshots(doc)
    doc["paths"].update(_extension_paths())
    for method, path, operation in _operations(doc):
        _add_error_responses(method, path, operation)
        _describe_responses(operation)
    doc["x-websockets"] = _websockets()
    return doc


def _operations(doc: Json) -> Iterator[tuple[str, str, Json]]:
    for path, item in doc["paths"].items():
        for method in HTTP_METHODS:
            if method in item:
                yield method, path, item[method]


def _ref(kind: str, name: str) -> Json:
    return {"$ref": f"#/components/{kind}/{name}"}


def _json_content(schema: Json) -> Json:
    return {"application/json": {"schema": schema}}


def _amend_info(doc: Json) -> None:
    doc["info"]["description"] = (
        doc["info"].get("description", "").rstrip("\n")
        + "\n\nServed by the FlatRender orchestrator. This document is a superset of the API"
        " contract: it adds response descriptions, the Error schema and error responses, the"
        " node protocol v1 fields (`node_secret`, `acked_command_ids`), the service extensions"
        " (catalog, billing, entitlements), this document itself and the progress WebSocket"
        " (`x-websockets`).\n"
    )
    doc["servers"] = [{"url": API_PREFIX, "description": "This orchestrator"}]
    doc["tags"].append({"name": "Meta", "description": "The service describing itself"})
    schemes = doc["components"]["securitySchemes"]
    schemes["BearerAuth"].setdefault("description", "User JWT (HS256): `sub`, `role`, `exp`.")
    schemes["ServiceToken"].setdefault("description", "Opaque service token from configuration.")
    schemes["NodeHmac"].setdefault(
        "description",
        "`t=<unix seconds>,v1=<hex>` with v1 = HMAC-SHA256(node secret,"
        ' "<t>.<METHOD>.<path>.<hex sha256 of the raw body>"); path without query, from `/v1/`.',
    )


def _object(properties: Json, required: list[str]) -> Json:
    return {"type": "object", "required": required, "properties": properties}


def _extra_schemas() -> Json:
    uuid = {"type": "string", "format": "uuid"}
    int64 = {"type": "integer", "format": "int64"}
    error_body = _object(
        {
            "code": {"type": "string", "pattern": "^[a-z][a-z0-9_]*$"},
            "message": {"type": "string", "description": "For a person to read."},
            "details": {"type": "object", "additionalProperties": True},
        },
        ["code", "message"],
    )
    scene = _object(
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
        "scenes": {"type": "array", "items": _ref("schemas", "CatalogScene")},
    }
    entitlements = {
        "type": "array",
        "items": {"type": "string", "enum": ENTITLEMENTS},
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
        "Error": _object({"error": error_body}, ["error"]),
        "CatalogScene": scene,
        "CatalogProject": _object(
            {**read_only, **project_fields},
            [*read_only, *(name for name in project_fields if name != "has_voiceover")],
        ),
        "BillingAccount": _object(
            {"user_id": uuid, "balance_minor": int64, "entitlements": entitlements},
            ["user_id", "balance_minor", "entitlements"],
        ),
        "BillingEntitlements": _object({"entitlements": entitlements}, ["entitlements"]),
        "BillingCredit": _object({"amount_minor": {**int64, "minimum": 1}}, ["amount_minor"]),
        "RenderNodeRegistered": {
            "allOf": [
                _ref("schemas", "RenderNode"),
                _object(
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
                _ref("schemas", "NodeHeartbeat"),
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


def _add_node_protocol_fields(doc: Json) -> None:
    paths = doc["paths"]
    created = paths["/nodes"]["post"]["responses"]["201"]
    created["content"] = _json_content(_ref("schemas", "RenderNodeRegistered"))
    body = paths["/internal/nodes/{node_id}/heartbeat"]["post"]["requestBody"]
    body["content"] = _json_content(_ref("schemas", "NodeHeartbeatRequest"))


SNAPSHOT_FRAME = (
    "The project's absolute frame number (the numbering of render ranges: 0 is the project's"
    " first frame), not an offset into the scene. It must lie within the scene's"
    " `start_frame..end_frame` (catalog), else 422 naming `$.frame_number`."
)


def _describe_snapshots(doc: Json) -> None:
    """What the contract leaves unsaid about snapshots (issue 5, README "Snapshots")."""
    paths = doc["paths"]
    ask = paths["/snapshots"]["post"]
    ask["description"] = (
        "One frame of a scene of a saved project. A fresh cached image of the same (project"
        " version, scene, frame) is answered at once (`Cached`, presigned urls); otherwise a"
        " snapshot render is queued or shared with an identical one under way (`Pending`,"
        " `Rendering`). A render not cached within `[snapshots] render_timeout_sec` of its"
        " request fails (refunded) and the next request renders again. `frame_number`: "
        + SNAPSHOT_FRAME
    )
    fields = ask["requestBody"]["content"]["application/json"]["schema"]["properties"]
    fields["frame_number"]["description"] = SNAPSHOT_FRAME
    fields["scene_key"]["description"] = "A scene of the project's current version (catalog)."
    # The contract's Snapshot schema is served exactly as given: the reading is described here.
    read = paths["/snapshots/{snapshot_id}"]["get"]
    read["description"] = (
        "The snapshot while it lives: `status` is `Pending`, `Rendering`, `Cached` or `Failed`;"
        " `frame_number` is the project's absolute frame number. After `expires_at` it is gone:"
        " 404 `snapshot_expired` (request the frame again), then `not_found` once the Reaper"
        " removed it."
    )
    read["responses"]["404"] = _error_response(
        "No such snapshot visible to the caller (`not_found`), or it has expired"
        " (`snapshot_expired`, details `id`, `expires_at`).",
        "snapshot_expired",
    )


def _error_response(description: str, code: str) -> Json:
    example = {"error": {"code": code, "message": description, "details": {}}}
    return {
        "description": description,
        "content": {"application/json": {"schema": _ref("schemas", "Error"), "example": example}},
    }


def _error_responses() -> Json:
    return {
        "MalformedJson": _error_response("The body is not JSON.", "malformed_json"),
        "Unauthorized": _error_response("Missing or invalid token.", "unauthorized"),
        "BadSignature": _error_response(
            "Bad, expired or malformed X-Node-Signature (code unauthorized), or one already"
            " accepted within the skew window (code replayed): sign each request anew.",
            "unauthorized",
        ),
        "TooManySignedRequests": _error_response(
            "The node sent more signed requests within the skew window than the daemon"
            " remembers for one node; retry later.",
            "too_many_requests",
        ),
        "Forbidden": _error_response("Not allowed for this caller.", "forbidden"),
        "PriceTypeNotAllowed": _error_response(
            "Not allowed for this caller (`forbidden`), or a user asked for a price type its"
            " account does not hold, or for `Snapshot` (`price_type_not_allowed`, details"
            " `price_type`); nothing was written.",
            "price_type_not_allowed",
        ),
        "TooManySnapshots": {
            **_error_response(
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
        "NotFound": _error_response("No such resource.", "not_found"),
        "Conflict": _error_response("Not possible in the current state.", "conflict"),
        "StaleAssignment": _error_response(
            "The range is no longer assigned to this node; drop the work.", "stale_assignment"
        ),
        "InsufficientBalance": _error_response(
            "The balance does not cover the price.", "insufficient_balance"
        ),
        "ValidationFailed": _error_response("Invalid parameters or body.", "validation_failed"),
        "StorageError": _error_response(
            "Object storage refused the operation (e.g. access denied); nothing was lost.",
            "storage_error",
        ),
        "ServiceUnavailable": _error_response(
            "Object storage or database unavailable; retry later.", "service_unavailable"
        ),
    }


# Operations whose body names an existing resource (the saved project): unknown is a 404.
_NAMED_IN_BODY = frozenset({("post", "/renders"), ("post", "/snapshots")})
# Operations that delete from object storage, which may refuse (a plain StorageError: 502).
_STORAGE_WRITES = frozenset({("delete", "/exports/{export_id}")})


def _error_codes(method: str, path: str, operation: Json) -> dict[str, str]:
    """Status code -> name under components/responses, for the errors `operation` may answer."""
    internal = path.startswith(INTERNAL_PREFIX)
    codes: dict[str, str] = {"401": "BadSignature" if internal else "Unauthorized"}
    if not internal:
        codes["403"] = "PriceTypeNotAllowed" if (method, path) in _PRICE_CHECKED else "Forbidden"
    if "requestBody" in operation:
        codes["400"] = "MalformedJson"
    if "{" in path or (method, path) in _NAMED_IN_BODY:
        codes["404"] = "NotFound"
    if internal and path.endswith(_FENCED_SUFFIXES):
        codes["409"] = "StaleAssignment"
    elif (method, path) in _STATE_CONFLICTS:
        codes["409"] = "Conflict"
    if (method, path) in _CHARGED:
        codes["402"] = "InsufficientBalance"
    if "requestBody" in operation or operation.get("parameters"):
        codes["422"] = "ValidationFailed"
    if (method, path) in _CAPPED:
        codes["429"] = "TooManySnapshots"
    if (method, path) in _STORAGE_WRITES:
        codes["502"] = "StorageError"
    if internal:
        codes["429"] = "TooManySignedRequests"
    codes["503"] = "ServiceUnavailable"
    return codes


def _add_error_responses(method: str, path: str, operation: Json) -> None:
    if operation.get("security") == []:
        return  # unauthenticated and needs no backing service: it cannot fail for the caller
    responses = operation["responses"]
    for status, name in sorted(_error_codes(method, path, operation).items()):
        existing = responses.get(status)
        if existing is None:
            responses[status] = _ref("responses", name)
        elif "$ref" not in existing and "content" not in existing:
            existing["content"] = _json_content(_ref("schemas", "Error"))


def _describe_responses(operation: Json) -> None:
    for status, response in operation["responses"].items():
        if "$ref" not in response and "description" not in response:
            response["description"] = _SUCCESS_DESCRIPTIONS.get(
                str(status), http.HTTPStatus(int(status)).phrase
            )


def _service_operation(summary: str, responses: Json, **extra: Any) -> Json:
    return {
        "tags": ["Admin"],
        "summary": summary,
        "security": [{"ServiceToken": []}],
        **extra,
        "responses": responses,
    }


def _path_parameter(name: str) -> Json:
    schema = {"type": "string", "format": "uuid"}
    return {"name": name, "in": "path", "required": True, "schema": schema}


def _extension_paths() -> Json:
    project = _json_content(_ref("schemas", "CatalogProject"))
    account = {"description": "OK", "content": _json_content(_ref("schemas", "BillingAccount"))}
    credit = _json_content(_ref("schemas", "BillingCredit"))
    entitled = _json_content(_ref("schemas", "BillingEntitlements"))
    in_project = [_path_parameter("saved_project_id")]
    in_account = [_path_parameter("user_id")]
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
                    "200": {"description": "OK", "content": _json_content({"type": "object"})}
                },
            }
        },
    }


def _websockets() -> Json:
    return {
        "/ws/v1/render/{job_id}": {
            "summary": "Live progress of a render job",
            "parameters": [
                _path_parameter("job_id"),
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
                "schema": _ref("schemas", "RenderProgress"),
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
