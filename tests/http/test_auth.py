"""Every way in, and every way a request is turned away (DESIGN §5)."""

import time
import warnings
from uuid import uuid4

import jwt
import pytest

from tests.helpers import Tokens, bearer

CATALOG = "/v1/billing/accounts/{}"


async def status_and_code(client, path: str, headers: dict[str, str]) -> tuple[int, str]:
    response = await client.get(path, headers=headers)
    body = await response.get_json()
    return response.status_code, body["error"]["code"] if "error" in body else ""


async def test_missing_header_is_401(client) -> None:
    assert await status_and_code(client, "/v1/renders", {}) == (401, "unauthorized")


@pytest.mark.parametrize("header", ["Basic abc", "Bearer", "Bearer   ", "token"])
async def test_malformed_header_is_401(client, header: str) -> None:
    code = await status_and_code(client, "/v1/renders", {"Authorization": header})
    assert code == (401, "unauthorized")


async def test_expired_jwt_is_401(client, tokens: Tokens) -> None:
    past = int(time.time()) - 10
    token = jwt.encode({"sub": str(uuid4()), "exp": past}, tokens.secret, algorithm="HS256")
    response = await client.get("/v1/renders", headers=bearer(token))
    assert response.status_code == 401
    assert "expired" in (await response.get_json())["error"]["message"]


async def test_forged_jwt_is_401(client) -> None:
    token = jwt.encode(
        {"sub": str(uuid4()), "exp": int(time.time()) + 60},
        "another-secret-entirely-but-long-enough-for-hs256",
        "HS256",
    )
    assert (await client.get("/v1/renders", headers=bearer(token))).status_code == 401


async def test_wrong_algorithm_is_401(client, tokens: Tokens) -> None:
    claims = {"sub": str(uuid4()), "exp": int(time.time()) + 60}
    unsigned = jwt.encode(claims, None, algorithm="none")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", jwt.warnings.InsecureKeyLengthWarning)
        hs512 = jwt.encode(claims, tokens.secret, algorithm="HS512")
    for token in (unsigned, hs512):
        assert (await client.get("/v1/renders", headers=bearer(token))).status_code == 401


async def test_jwt_without_exp_or_with_bad_sub_or_role_is_401(client, tokens: Tokens) -> None:
    later = int(time.time()) + 60
    for claims in (
        {"sub": str(uuid4())},
        {"sub": "not-a-uuid", "exp": later},
        {"sub": str(uuid4()), "exp": later, "role": "root"},
    ):
        token = jwt.encode(claims, tokens.secret, algorithm="HS256")
        assert (await client.get("/v1/renders", headers=bearer(token))).status_code == 401


async def test_unknown_service_token_is_401(client) -> None:
    assert (await client.get("/v1/renders", headers=bearer("svc-nope"))).status_code == 401


async def test_user_token_is_403_on_admin_operation(client, tokens: Tokens) -> None:
    response = await client.get("/v1/nodes", headers=bearer(tokens.user))
    assert response.status_code == 403
    assert (await response.get_json())["error"]["code"] == "forbidden"


async def test_admin_token_passes_admin_check(client, tokens: Tokens) -> None:
    response = await client.get("/v1/nodes", headers=bearer(tokens.admin))
    assert response.status_code == 200


async def test_user_and_admin_tokens_are_403_on_service_extensions(client, tokens: Tokens) -> None:
    for token in (tokens.user, tokens.admin):
        response = await client.get(CATALOG.format(uuid4()), headers=bearer(token))
        assert response.status_code == 403


async def test_service_token_is_accepted(client, tokens: Tokens) -> None:
    response = await client.get(CATALOG.format(uuid4()), headers=bearer(tokens.service))
    assert response.status_code == 200
