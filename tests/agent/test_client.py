"""The signed client against a real HTTP server that verifies signatures like the daemon will."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from typing import Any
from uuid import uuid4

import attrs
import httpx
import pytest
import trio
from quart import jsonify, request
from quart_trio import QuartTrio

from flatrender.agent.client import (
    Reply,
    SignedClient,
    TransferFailed,
    Unavailable,
    normalize_api,
    put_bytes,
)
from flatrender.domain import signing
from tests.agent.stub_orchestrator import free_port, serve

NODE_ID = uuid4()
SECRET = signing.node_secret("master", NODE_ID)


@attrs.define
class Seen:
    raw: list[bytes] = attrs.field(factory=list)
    paths: list[str] = attrs.field(factory=list)
    verified: list[bool] = attrs.field(factory=list)
    headers: list[str] = attrs.field(factory=list)
    answers: list[int] = attrs.field(factory=list)  # statuses to answer with, then 200


def echo_app(seen: Seen) -> QuartTrio:
    app = QuartTrio(__name__)

    @app.post("/v1/internal/echo")
    async def echo() -> Any:
        raw = await request.get_data()
        header = request.headers.get(signing.HEADER, "")
        seen.raw.append(raw)
        seen.headers.append(header)
        seen.paths.append(request.full_path)
        seen.verified.append(
            signing.verify(SECRET, header, request.method, request.path, raw, time.time(), 300)
        )
        status = seen.answers.pop(0) if seen.answers else 200
        if status == 409:
            return jsonify({"error": {"code": "stale_assignment", "message": "moved"}}), 409
        return jsonify({"status": status, "echo": json.loads(raw)}), status

    @app.put("/bucket/<key>")
    async def put(key: str) -> Any:
        return ("", 200) if key == "ok" else ("", 403)

    return app


@pytest.fixture
def seen() -> Seen:
    return Seen()


@pytest.fixture
async def base(nursery: trio.Nursery, seen: Seen) -> str:
    return await serve(nursery, echo_app(seen))


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient() as http:
        yield http


@pytest.fixture
def client(base: str, http: httpx.AsyncClient) -> SignedClient:
    return SignedClient(http, base + "/v1/", NODE_ID, SECRET, "sim-1", max_backoff=0.05)


async def test_signs_the_exact_bytes_it_sends(client: SignedClient, seen: Seen) -> None:
    body = {"frame_number": 7, "text": "é ü", "nested": {"b": [1, 2]}}
    reply = await client.post("/v1/internal/echo", body)
    assert reply == Reply(200, {"status": 200, "echo": body})
    assert seen.verified == [True]
    assert json.loads(seen.raw[0]) == body


async def test_signs_the_path_without_its_query(client: SignedClient, seen: Seen) -> None:
    await client.post("/v1/internal/echo?attempt=2", {"a": 1})
    assert seen.paths == ["/v1/internal/echo?attempt=2"]
    assert seen.verified == [True]


async def test_a_wrong_secret_does_not_verify(
    base: str, http: httpx.AsyncClient, seen: Seen
) -> None:
    await SignedClient(http, base, NODE_ID, "nope", "x").post("/v1/internal/echo", {})
    assert seen.verified == [False]


async def test_call_retries_5xx_429_and_401_then_returns_the_answer(
    client: SignedClient, seen: Seen
) -> None:
    seen.answers = [503, 429, 401, 500]
    reply = await client.call("/v1/internal/echo", {"n": 1})
    assert reply.ok and len(seen.raw) == 5
    assert all(seen.verified)  # signed afresh on every attempt


async def test_identical_requests_in_one_second_never_share_a_signature(
    base: str, http: httpx.AsyncClient, seen: Seen
) -> None:
    # The daemon refuses a signature it accepted before (401 replayed): a retry at once, or
    # two equal heartbeats in one second, must each be signed anew.
    now = float(int(time.time()))
    client = SignedClient(http, base, NODE_ID, SECRET, "sim-1", clock=lambda: now)
    for _ in range(3):
        await client.post("/v1/internal/echo", {"same": True})
    seen.answers = [503]
    assert (await client.call("/v1/internal/echo", {"same": True})).ok
    assert len(seen.headers) == 5
    assert len(set(seen.headers)) == 5
    assert all(seen.verified)
    stamps = [signing.parse(h).t for h in seen.headers]  # type: ignore[union-attr]
    assert stamps == [int(now) + i for i in range(5)]


async def test_call_returns_a_refusal_without_retrying(client: SignedClient, seen: Seen) -> None:
    seen.answers = [409]
    reply = await client.call("/v1/internal/echo", {})
    assert (reply.status, reply.error_code) == (409, "stale_assignment")
    assert len(seen.raw) == 1


async def test_no_server_is_unavailable_and_call_keeps_trying() -> None:
    async with httpx.AsyncClient() as http:
        client = SignedClient(
            http, f"http://127.0.0.1:{free_port()}", NODE_ID, SECRET, "n", max_backoff=0.02
        )
        with pytest.raises(Unavailable):
            await client.post("/v1/internal/echo", {})
        with trio.move_on_after(0.3) as scope:
            await client.call("/v1/internal/echo", {})
        assert scope.cancelled_caught


async def test_presigned_put_refused_is_a_transfer_failure(
    base: str, http: httpx.AsyncClient
) -> None:
    await put_bytes(http, f"{base}/bucket/ok?X-Amz-Signature=1", b"data", "video/mp4")
    with pytest.raises(TransferFailed, match="403"):
        await put_bytes(http, f"{base}/bucket/expired?X-Amz-Signature=1", b"x", "video/mp4")


@pytest.mark.parametrize(
    "url", ["http://h:8080", "http://h:8080/", "http://h:8080/v1", "http://h:8080/v1/"]
)
def test_api_base_is_normalized(url: str) -> None:
    assert normalize_api(url) == "http://h:8080"
