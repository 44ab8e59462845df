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

import yaml

from flatrender.http.openapi_extensions import (
    Json,
    error_response,
    error_responses,
    extension_paths,
    extra_schemas,
    json_content,
    ref,
    websockets,
)

__all__ = ["contract_operations", "openapi_document"]

API_PREFIX = "/v1"
HTTP_METHODS = ("get", "put", "post", "delete", "options", "head", "patch", "trace")
INTERNAL_PREFIX = "/internal/"

_SUCCESS_DESCRIPTIONS = {"200": "OK", "201": "Created", "202": "Accepted", "204": "No Content"}
# Lease fencing (DESIGN §4) applies to the node reports about an assigned range.
_FENCED_SUFFIXES = ("/frames", "/crash", "/replica-ready")
# Conflicts with the current state of the resource: a terminal job, a job that is not Failed,
# an expired export, a node name or a discount code already taken.
_STATE_CONFLICTS = {
    ("post", "/renders/{job_id}/cancel"),
    ("post", "/renders/{job_id}/retry"),
    ("post", "/exports/{export_id}/extend"),
    ("post", "/nodes"),  # node_name_taken
    ("post", "/renders"),  # discount_code_used
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
    doc["components"]["schemas"].update(extra_schemas())
    doc["components"].setdefault("responses", {}).update(error_responses())
    _add_node_protocol_fields(doc)
    _describe_snapshots(doc)
    _add_list_scope(doc)
    doc["paths"].update(extension_paths())
    for method, path, operation in _operations(doc):
        _adderror_responses(method, path, operation)
        _describe_responses(operation)
    doc["x-websockets"] = websockets()
    return doc


def _operations(doc: Json) -> Iterator[tuple[str, str, Json]]:
    for path, item in doc["paths"].items():
        for method in HTTP_METHODS:
            if method in item:
                yield method, path, item[method]


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


def _add_node_protocol_fields(doc: Json) -> None:
    paths = doc["paths"]
    created = paths["/nodes"]["post"]["responses"]["201"]
    created["content"] = json_content(ref("schemas", "RenderNodeRegistered"))
    body = paths["/internal/nodes/{node_id}/heartbeat"]["post"]["requestBody"]
    body["content"] = json_content(ref("schemas", "NodeHeartbeatRequest"))


SNAPSHOT_FRAME = (
    "The project's absolute frame number (the numbering of render ranges: 0 is the project's"
    " first frame), not an offset into the scene. It must lie within the scene's"
    " `start_frame..end_frame` (catalog), else 422 naming `$.frame_number`."
)


def _add_list_scope(doc: Json) -> None:
    """``GET /renders?scope=all`` (issue 11). The contract's parameters are served exactly as
    given, so the extra one is described in words."""
    doc["paths"]["/renders"]["get"]["description"] = (
        "The caller's own jobs, admins included. Query `scope=all` (admins and services only,"
        " else 403; `mine` is the default) lists every user's jobs."
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
    read["responses"]["404"] = error_response(
        "No such snapshot visible to the caller (`not_found`), or it has expired"
        " (`snapshot_expired`, details `id`, `expires_at`).",
        "snapshot_expired",
    )


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


def _adderror_responses(method: str, path: str, operation: Json) -> None:
    if operation.get("security") == []:
        return  # unauthenticated and needs no backing service: it cannot fail for the caller
    responses = operation["responses"]
    for status, name in sorted(_error_codes(method, path, operation).items()):
        existing = responses.get(status)
        if existing is None:
            responses[status] = ref("responses", name)
        elif "$ref" not in existing and "content" not in existing:
            existing["content"] = json_content(ref("schemas", "Error"))


def _describe_responses(operation: Json) -> None:
    for status, response in operation["responses"].items():
        if "$ref" not in response and "description" not in response:
            response["description"] = _SUCCESS_DESCRIPTIONS.get(
                str(status), http.HTTPStatus(int(status)).phrase
            )
