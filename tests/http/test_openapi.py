"""The served OpenAPI document: valid OpenAPI 3.0 and a superset of the contract."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from openapi_spec_validator import OpenAPIV30SpecValidator, validate
from openapi_spec_validator.validation.exceptions import OpenAPIValidationError

from flatrender.http.openapi import contract_operations, openapi_document

CONTRACT = Path(__file__).parents[2] / "flatrender" / "http" / "contract" / "openapi.yaml"
SHARED_CONTRACT = Path("/work/shared/contract/openapi.yaml")
METHODS = ("get", "put", "post", "delete", "options", "head", "patch", "trace")

Json = dict[str, Any]


@pytest.fixture(scope="module")
def contract() -> Json:
    loaded: Json = yaml.safe_load(CONTRACT.read_text("utf-8"))
    return loaded


@pytest.fixture(scope="module")
def doc() -> Json:
    return openapi_document()


def operations(document: Json) -> Iterator[tuple[str, str, Json]]:
    for path, item in document["paths"].items():
        for method in METHODS:
            if method in item:
                yield method, path, item[method]


def resolve(document: Json, node: Json) -> Json:
    while "$ref" in node:
        assert node["$ref"].startswith("#/")
        target: Any = document
        for part in node["$ref"][2:].split("/"):
            target = target[part]
        node = target
    return node


def schema_properties(document: Json, schema: Json) -> dict[str, Json]:
    """All properties of a schema, following $ref and allOf."""
    schema = resolve(document, schema)
    properties = dict(schema.get("properties", {}))
    for part in schema.get("allOf", []):
        properties.update(schema_properties(document, part))
    return properties


def test_packaged_contract_is_the_shared_contract() -> None:
    if not SHARED_CONTRACT.exists():
        pytest.skip("no shared contract on this machine")
    assert CONTRACT.read_bytes() == SHARED_CONTRACT.read_bytes()


def test_document_is_valid_openapi_3_0(doc: Json) -> None:
    assert doc["openapi"].startswith("3.0")
    validate(doc, cls=OpenAPIV30SpecValidator)


def test_raw_contract_is_not_valid_but_the_document_is(contract: Json, doc: Json) -> None:
    # Guards the premise of the derivation: the contract lacks response descriptions.
    with pytest.raises(OpenAPIValidationError):
        validate(contract, cls=OpenAPIV30SpecValidator)
    validate(doc, cls=OpenAPIV30SpecValidator)


def test_document_is_served_under_v1_with_contract_paths(contract: Json, doc: Json) -> None:
    assert doc["servers"] == [{"url": "/v1", "description": "This orchestrator"}]
    assert set(contract["paths"]) <= set(doc["paths"])
    assert not any(path.startswith("/v1") for path in doc["paths"])


def test_contract_operations_are_prefixed_with_v1(contract: Json) -> None:
    expected = {(m.upper(), "/v1" + p) for m, p, _ in operations(contract)}
    assert contract_operations() == expected
    assert ("POST", "/v1/renders") in expected
    assert ("POST", "/v1/internal/nodes/{node_id}/heartbeat") in expected
    assert len(expected) == 32


def test_every_contract_operation_is_served_with_the_same_parameters(
    contract: Json, doc: Json
) -> None:
    for method, path, operation in operations(contract):
        served = doc["paths"][path][method]
        assert served.get("parameters") == operation.get("parameters"), (method, path)
        assert served.get("security") == operation.get("security"), (method, path)
        assert served.get("tags") == operation.get("tags"), (method, path)
        assert set(operation["responses"]) <= set(served["responses"]), (method, path)
        assert ("requestBody" in served) == ("requestBody" in operation), (method, path)


def test_every_contract_schema_is_present_with_a_superset_of_properties(
    contract: Json, doc: Json
) -> None:
    served_schemas = doc["components"]["schemas"]
    for name, schema in contract["components"]["schemas"].items():
        assert name in served_schemas, name
        contract_props = schema_properties(contract, schema)
        served_props = schema_properties(doc, served_schemas[name])
        for prop, definition in contract_props.items():
            assert served_props.get(prop) == definition, (name, prop)
        assert set(schema.get("required", [])) <= set(served_schemas[name].get("required", []))


def test_contract_security_schemes_and_tags_are_kept(contract: Json, doc: Json) -> None:
    assert doc["security"] == contract["security"]
    for name, scheme in contract["components"]["securitySchemes"].items():
        assert scheme.items() <= doc["components"]["securitySchemes"][name].items()
    assert contract["tags"] == doc["tags"][: len(contract["tags"])]


def test_every_response_has_a_description(doc: Json) -> None:
    for method, path, operation in operations(doc):
        for status, response in operation["responses"].items():
            assert resolve(doc, response).get("description"), (method, path, status)


def test_success_descriptions_follow_the_status_code(doc: Json) -> None:
    assert doc["paths"]["/renders"]["get"]["responses"]["200"]["description"] == "OK"
    assert doc["paths"]["/renders"]["post"]["responses"]["201"]["description"] == "Created"
    # Descriptions the contract has are kept.
    assert doc["paths"]["/exports/{export_id}"]["delete"]["responses"]["204"] == {
        "description": "Deleted"
    }


def test_error_schema(doc: Json) -> None:
    error = doc["components"]["schemas"]["Error"]
    assert error["required"] == ["error"]
    body = error["properties"]["error"]
    assert set(body["required"]) == {"code", "message"}
    assert set(body["properties"]) == {"code", "message", "details"}
    assert body["properties"]["details"]["type"] == "object"


def error_statuses(doc: Json, operation: Json) -> dict[str, Json]:
    """Error responses of an operation whose body is the Error schema."""
    found = {}
    for status, response in operation["responses"].items():
        content = resolve(doc, response).get("content", {}).get("application/json", {})
        if int(status) >= 400 and content.get("schema") == {"$ref": "#/components/schemas/Error"}:
            found[status] = resolve(doc, response)
    return found


def test_every_operation_has_error_responses_using_the_error_schema(doc: Json) -> None:
    for method, path, operation in operations(doc):
        if path == "/openapi.json":
            continue  # unauthenticated and served from memory
        errors = error_statuses(doc, operation)
        assert {"401", "503"} <= set(errors), (method, path)
        if "{" in path or (method, path) in {("post", "/renders"), ("post", "/snapshots")}:
            assert "404" in errors, (method, path)  # the path's id, or the body's project
        if "requestBody" in operation:
            assert {"400", "422"} <= set(errors), (method, path)
        if not path.startswith("/internal/"):
            assert "403" in errors, (method, path)


def test_charged_operations_answer_402(doc: Json) -> None:
    paths = doc["paths"]
    charged = [
        paths["/renders"]["post"],
        paths["/renders/{job_id}/retry"]["post"],
        paths["/exports/{export_id}/extend"]["post"],
    ]
    for operation in charged:
        assert "402" in error_statuses(doc, operation)
    # The contract's own 402 keeps its description and gains the Error body.
    assert paths["/renders"]["post"]["responses"]["402"]["description"] == (
        "Insufficient balance/charge"
    )
    assert "402" not in paths["/renders"]["get"]["responses"]


def test_internal_operations_answer_bad_signature_and_stale_assignment(doc: Json) -> None:
    for method, path, operation in operations(doc):
        if not path.startswith("/internal/"):
            continue
        errors = error_statuses(doc, operation)
        assert errors["401"]["content"]["application/json"]["example"]["error"]["code"] == (
            "unauthorized"  # as the daemon answers it ("replayed" for a signature seen before)
        )
        example = errors["429"]["content"]["application/json"]["example"]
        assert example["error"]["code"] == "too_many_requests"
        fenced = path.rsplit("/", 1)[1] in {"frames", "crash", "replica-ready"}
        assert ("409" in errors) == fenced, (method, path)
        if fenced:
            example = errors["409"]["content"]["application/json"]["example"]
            assert example["error"]["code"] == "stale_assignment"


def test_node_registration_returns_the_node_secret(doc: Json) -> None:
    created = doc["paths"]["/nodes"]["post"]["responses"]["201"]
    schema = created["content"]["application/json"]["schema"]
    resolved = resolve(doc, schema)
    assert {"$ref": "#/components/schemas/RenderNode"} in resolved["allOf"]
    properties = schema_properties(doc, schema)
    assert properties["node_secret"] == {**properties["node_secret"], "type": "string"}
    assert "id" in properties


def test_heartbeat_body_carries_acked_command_ids(doc: Json) -> None:
    body = doc["paths"]["/internal/nodes/{node_id}/heartbeat"]["post"]["requestBody"]
    assert body["required"] is True
    schema = body["content"]["application/json"]["schema"]
    assert {"$ref": "#/components/schemas/NodeHeartbeat"} in resolve(doc, schema)["allOf"]
    acked = schema_properties(doc, schema)["acked_command_ids"]
    assert acked["type"] == "array"
    assert acked["items"] == {"type": "string", "format": "uuid"}


def test_catalog_extension(doc: Json) -> None:
    item = doc["paths"]["/catalog/projects/{saved_project_id}"]
    project_ref = {"$ref": "#/components/schemas/CatalogProject"}
    for method in ("get", "put"):
        operation = item[method]
        assert operation["security"] == [{"ServiceToken": []}]
        assert operation["tags"] == ["Admin"]
        assert operation["responses"]["200"]["content"]["application/json"]["schema"] == (
            project_ref
        )
    body = item["put"]["requestBody"]["content"]["application/json"]["schema"]
    assert body == project_ref
    project = doc["components"]["schemas"]["CatalogProject"]
    properties = project["properties"]
    assert set(properties) == {
        "saved_project_id",
        "version",
        "updated_at",
        "owner_user_id",
        "name",
        "template_md5",
        "template_url",
        "ae_version",
        "frame_rate",
        "total_frames",
        "duration_sec",
        "has_voiceover",
        "scenes",
    }
    assert "has_voiceover" not in project["required"]
    assert properties["version"]["readOnly"] is True
    assert properties["frame_rate"]["type"] == "integer"
    assert properties["duration_sec"]["type"] == "number"
    scene = resolve(doc, properties["scenes"]["items"])
    assert set(scene["required"]) == {"scene_key", "start_frame", "end_frame"}


def test_billing_extension(doc: Json) -> None:
    account_ref = {"$ref": "#/components/schemas/BillingAccount"}
    read = doc["paths"]["/billing/accounts/{user_id}"]["get"]
    credit = doc["paths"]["/billing/accounts/{user_id}/credit"]["post"]
    entitle = doc["paths"]["/billing/accounts/{user_id}/entitlements"]["put"]
    for operation in (read, credit, entitle):
        assert operation["security"] == [{"ServiceToken": []}]
        assert operation["tags"] == ["Admin"]
        assert operation["responses"]["200"]["content"]["application/json"]["schema"] == (
            account_ref
        )
    account = doc["components"]["schemas"]["BillingAccount"]
    assert account["properties"]["balance_minor"] == {"type": "integer", "format": "int64"}
    amount = doc["components"]["schemas"]["BillingCredit"]["properties"]["amount_minor"]
    assert amount == {"type": "integer", "format": "int64", "minimum": 1}
    assert "402" not in credit["responses"]
    entitlements = {
        "type": "array",
        "items": {"type": "string", "enum": ["Free", "Plan", "Preview", "Reseller"]},
    }
    assert "entitlements" in account["required"]
    assert account["properties"]["entitlements"].items() >= entitlements.items()
    body = entitle["requestBody"]["content"]["application/json"]["schema"]
    assert resolve(doc, body)["properties"]["entitlements"].items() >= entitlements.items()
    assert {"403", "404", "422"} <= set(entitle["responses"])


def test_price_type_refusal_and_snapshot_cap_are_documented(doc: Json) -> None:
    refused = {"$ref": "#/components/responses/PriceTypeNotAllowed"}
    assert doc["paths"]["/renders"]["post"]["responses"]["403"] == refused
    assert doc["paths"]["/renders/{job_id}/retry"]["post"]["responses"]["403"] == refused
    assert "price_type_not_allowed" in str(doc["components"]["responses"]["PriceTypeNotAllowed"])
    capped = doc["paths"]["/snapshots"]["post"]["responses"]["429"]
    assert capped == {"$ref": "#/components/responses/TooManySnapshots"}
    assert "Retry-After" in doc["components"]["responses"]["TooManySnapshots"]["headers"]


def test_openapi_json_is_public(doc: Json) -> None:
    operation = doc["paths"]["/openapi.json"]["get"]
    assert operation["security"] == []
    assert operation["responses"]["200"]["description"]


def test_websocket_extension(doc: Json) -> None:
    ws = doc["x-websockets"]["/ws/v1/render/{job_id}"]
    names = {(p["name"], p["in"]) for p in ws["parameters"]}
    assert names == {("job_id", "path"), ("access_token", "query")}
    assert ws["messages"]["schema"] == {"$ref": "#/components/schemas/RenderProgress"}
    assert ws["messages"]["max_per_second"] == 10
    assert set(ws["close_codes"]) == {"1000", "1001", "1008", "1013", "4401", "4404"}


def test_info_says_it_is_a_superset(contract: Json, doc: Json) -> None:
    description = doc["info"]["description"]
    assert description.startswith(contract["info"]["description"].rstrip("\n"))
    assert "FlatRender orchestrator" in description
    assert "superset" in description
    assert doc["info"]["title"] == contract["info"]["title"]


def test_document_is_a_fresh_copy_each_time() -> None:
    first = openapi_document()
    first["paths"].clear()
    assert openapi_document()["paths"]


def test_snapshot_frame_number_is_documented_as_absolute_and_expiry_as_404(doc: Json) -> None:
    ask = doc["paths"]["/snapshots"]["post"]
    frame = ask["requestBody"]["content"]["application/json"]["schema"]["properties"][
        "frame_number"
    ]
    for text in (frame["description"], ask["description"]):
        assert "absolute frame number" in text and "start_frame..end_frame" in text
    read = doc["paths"]["/snapshots/{snapshot_id}"]["get"]
    assert "absolute frame number" in read["description"]
    missing = read["responses"]["404"]
    assert "snapshot_expired" in missing["description"]
    assert missing["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/Error"
    }
