"""The one error format (DESIGN §5) for bad JSON, bad enums and types, bad ids, unknown ids."""

from uuid import uuid4

import pytest
from quart import Quart

from flatrender.http.app import create_app
from flatrender.http.coverage import require_contract_served, unserved
from tests.helpers import Tokens, bearer


def assert_error(body: dict, code: str) -> dict:
    assert set(body) == {"error"}
    error = body["error"]
    assert set(error) == {"code", "message", "details"}
    assert error["code"] == code
    assert isinstance(error["message"], str) and error["message"]
    assert "Traceback" not in error["message"]
    return error


def project_body(**changes: object) -> dict:
    body = {
        "owner_user_id": str(uuid4()),
        "name": "Promo",
        "template_md5": "a" * 32,
        "template_url": "https://templates.example/promo.aep",
        "ae_version": "2024",
        "frame_rate": 30,
        "total_frames": 300,
        "duration_sec": 10.0,
        "scenes": [{"scene_key": "intro", "start_frame": 0, "end_frame": 89}],
    }
    body.update(changes)
    return body


@pytest.mark.parametrize("raw", [b"{", b"not json", b"", b"\xff\xfe"])
async def test_malformed_json_is_400(client, tokens: Tokens, raw: bytes) -> None:
    response = await client.put(
        f"/v1/catalog/projects/{uuid4()}",
        data=raw,
        headers={**bearer(tokens.service), "Content-Type": "application/json"},
    )
    assert response.status_code == 400
    assert_error(await response.get_json(), "malformed_json")


async def test_non_object_body_is_422(client, tokens: Tokens) -> None:
    response = await client.put(
        f"/v1/catalog/projects/{uuid4()}", json=[1, 2], headers=bearer(tokens.service)
    )
    assert response.status_code == 422
    assert_error(await response.get_json(), "validation_failed")


async def test_missing_field_and_wrong_type_are_422_naming_each_field(client, tokens) -> None:
    body = project_body(frame_rate="30")
    del body["name"]
    response = await client.put(
        f"/v1/catalog/projects/{uuid4()}", json=body, headers=bearer(tokens.service)
    )
    assert response.status_code == 422
    error = assert_error(await response.get_json(), "validation_failed")
    fields = {e["field"]: e["message"] for e in error["details"]["errors"]}
    assert fields["$.name"] == "required field missing"
    assert "integer" in fields["$.frame_rate"]


async def test_bad_uuid_in_body_is_422(client, tokens: Tokens) -> None:
    response = await client.put(
        f"/v1/catalog/projects/{uuid4()}",
        json=project_body(owner_user_id="nope"),
        headers=bearer(tokens.service),
    )
    error = assert_error(await response.get_json(), "validation_failed")
    assert response.status_code == 422
    assert error["details"]["errors"][0]["field"] == "$.owner_user_id"


async def test_bad_uuid_in_path_is_422(client, tokens: Tokens) -> None:
    response = await client.get("/v1/catalog/projects/xyz", headers=bearer(tokens.service))
    assert response.status_code == 422
    error = assert_error(await response.get_json(), "validation_failed")
    assert error["details"]["errors"][0]["field"] == "saved_project_id"


async def test_unsupported_enum_value_is_422(client, tokens: Tokens) -> None:
    response = await client.put(
        f"/v1/catalog/projects/{uuid4()}",
        json=project_body(frame_rate=48),
        headers=bearer(tokens.service),
    )
    assert response.status_code == 422
    error = assert_error(await response.get_json(), "validation_failed")
    assert error["details"]["errors"][0]["field"] == "$.frame_rate"


async def test_unknown_id_is_404(client, tokens: Tokens) -> None:
    response = await client.get(f"/v1/catalog/projects/{uuid4()}", headers=bearer(tokens.service))
    assert response.status_code == 404
    assert_error(await response.get_json(), "not_found")


async def test_unknown_route_and_wrong_method_use_the_error_format(client) -> None:
    response = await client.get("/v1/no-such-thing")
    assert response.status_code == 404
    assert_error(await response.get_json(), "not_found")
    response = await client.delete("/v1/openapi.json")
    assert response.status_code == 405
    assert_error(await response.get_json(), "method_not_allowed")


async def test_oversized_body_is_413(client, tokens: Tokens) -> None:
    response = await client.put(
        f"/v1/catalog/projects/{uuid4()}",
        data=b"{" + b" " * (2 * 1024 * 1024) + b"}",
        headers={**bearer(tokens.service), "Content-Type": "application/json"},
    )
    assert response.status_code == 413
    assert_error(await response.get_json(), "payload_too_large")


async def test_every_contract_operation_has_a_route(app_state) -> None:
    assert unserved(create_app(app_state)) == []


def test_an_app_missing_a_contract_route_refuses_to_start() -> None:
    bare = Quart("bare")
    with pytest.raises(RuntimeError, match=r"\('GET', '/v1/renders'\)"):
        require_contract_served(bare)


async def test_openapi_document_is_served_without_auth(client) -> None:
    response = await client.get("/v1/openapi.json")
    assert response.status_code == 200
    document = await response.get_json()
    assert document["openapi"].startswith("3.")
    assert "/catalog/projects/{saved_project_id}" in document["paths"]
