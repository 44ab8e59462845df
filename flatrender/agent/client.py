"""HTTP for the simulated node: signed JSON calls to the orchestrator and presigned transfers.

Every ``/v1/internal/*`` call carries ``X-Node-Signature`` computed over the exact bytes sent
(the body is serialised here, once) and the path without its query (DESIGN §4). One
``httpx.AsyncClient`` is shared by every node of the process; a :class:`SignedClient` binds it to
one node's identity. Nothing here logs the secret.

Failures, for the callers:

- :class:`Unavailable`: no HTTP answer at all (refused, reset, timed out).
- A :class:`Reply` for every HTTP answer, whatever its status: the caller decides.
- :meth:`SignedClient.call` retries what may succeed later (no answer, 5xx, 429, and 401, which is
  logged as a bad secret or unknown node) with jittered exponential backoff until it gets another
  answer or is cancelled: the daemon may be restarting.
- :class:`TransferFailed`: a presigned PUT/GET was refused (4xx), or failed ``attempts`` times.
"""

from __future__ import annotations

import json
import logging
import random
import time
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit
from uuid import UUID

import attrs
import httpx
import trio

from flatrender.domain import signing

log = logging.getLogger("flatrender.agent")

JSON = "application/json"


class Unavailable(Exception):
    """The orchestrator (or storage) gave no HTTP answer."""


class TransferFailed(Exception):
    """A presigned upload or a download did not succeed."""


@attrs.frozen
class Reply:
    status: int
    body: Any  # the decoded JSON, or None

    @property
    def ok(self) -> bool:
        return 200 <= self.status < 300

    @property
    def error_code(self) -> str:
        """``error.code`` of the API's error format (DESIGN §5), or ``""``."""
        if isinstance(self.body, dict) and isinstance(self.body.get("error"), dict):
            return str(self.body["error"].get("code", ""))
        return ""

    @property
    def retryable(self) -> bool:
        return self.status >= 500 or self.status in (401, 429)


@attrs.define
class Backoff:
    """Jittered exponential delays: ``initial``, x2 each time up to ``cap``, each within ±25%
    so that many nodes retrying after a daemon restart spread out instead of stampeding."""

    initial: float = 0.25
    cap: float = 10.0
    rng: random.Random = attrs.field(factory=random.Random)
    _current: float = attrs.field(init=False, default=0.0)

    def next(self) -> float:
        self._current = min(self.cap, self.initial if self._current == 0 else self._current * 2)
        return self._current * self.rng.uniform(0.75, 1.25)

    def reset(self) -> None:
        self._current = 0.0


def utc_now() -> str:
    """Now as ISO 8601 UTC, the form of every timestamp the node sends."""
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def accepted(reply: Reply, node_name: str, what: str) -> bool:
    """True for a 2xx answer to a report; otherwise log why the node drops the work.

    409 ``stale_assignment`` is lease fencing (the range moved on); 404, the job is gone. Any
    other refusal is a bug on one side: logged as an error, and the work is dropped as well.
    """
    if reply.ok:
        return True
    if reply.status == 409 and reply.error_code == "stale_assignment":
        log.info("node=%s %s: stale assignment, dropping the work", node_name, what)
    elif reply.status == 404:
        log.info("node=%s %s: job or range not found, dropping the work", node_name, what)
    else:
        log.error(
            "node=%s %s refused: HTTP %d %s, dropping the work",
            node_name,
            what,
            reply.status,
            reply.body,
        )
    return False


def normalize_api(url: str) -> str:
    """The server root: ``http://host:port`` from it or from ``.../v1`` (dev.json's api_url)."""
    url = url.rstrip("/")
    return url[: -len("/v1")] if url.endswith("/v1") else url


def dump_json(body: Mapping[str, Any]) -> bytes:
    return json.dumps(body, separators=(",", ":"), default=str).encode()


def _decode(response: httpx.Response) -> Any:
    try:
        return response.json() if response.content else None
    except ValueError:
        return None


class SignedClient:
    """Node-signed JSON POSTs for node ``node_id`` (``name`` is for log lines only)."""

    def __init__(
        self,
        http: httpx.AsyncClient,
        api: str,
        node_id: UUID,
        secret: str,
        name: str,
        *,
        clock: Callable[[], float] = time.time,
        max_backoff: float = 10.0,
    ) -> None:
        self._http = http
        self._api = normalize_api(api)
        self.node_id = node_id
        self._signer = signing.Signer(secret, clock)
        self.name = name
        self.max_backoff = max_backoff

    def __repr__(self) -> str:
        return f"SignedClient(name={self.name!r}, node_id={self.node_id})"

    async def post(self, path: str, body: Mapping[str, Any]) -> Reply:
        """One signed attempt; :class:`Unavailable` when there is no HTTP answer."""
        raw = dump_json(body)
        url = self._api + path
        headers = {
            "Content-Type": JSON,
            # A retry is signed anew: the daemon refuses a signature it has seen (replayed).
            signing.HEADER: self._signer.header("POST", urlsplit(url).path, raw),
        }
        try:
            response = await self._http.post(url, content=raw, headers=headers)
        except httpx.TransportError as e:
            raise Unavailable(f"POST {path}: {type(e).__name__}: {e}") from e
        return Reply(response.status_code, _decode(response))

    async def call(self, path: str, body: Mapping[str, Any]) -> Reply:
        """:meth:`post` until the answer is one that retrying cannot change (see module doc)."""
        backoff = Backoff(cap=self.max_backoff)
        while True:
            level, delay = logging.WARNING, backoff.next()
            try:
                reply = await self.post(path, body)
            except Unavailable as e:
                problem = str(e)
            else:
                if not reply.retryable:
                    return reply
                problem = f"POST {path}: HTTP {reply.status} {reply.error_code}".rstrip()
                if reply.status == 401:
                    # Retrying may help (clock skew, a daemon that lost its key) but not soon.
                    problem += " (bad node secret, unknown node, or clock skew)"
                    level, delay = logging.ERROR, min(30.0, delay * 4)
            log.log(level, "node=%s %s; retrying in %.1fs", self.name, problem, delay)
            await trio.sleep(delay)


async def put_bytes(
    http: httpx.AsyncClient, url: str, data: bytes, content_type: str, *, attempts: int = 5
) -> None:
    """PUT ``data`` to a presigned url (the raw bytes are the object)."""
    await _transfer(
        http, "PUT", url, attempts, content=data, headers={"Content-Type": content_type}
    )


async def get_bytes(http: httpx.AsyncClient, url: str, *, attempts: int = 5) -> bytes:
    return await _transfer(http, "GET", url, attempts)


async def _transfer(
    http: httpx.AsyncClient, method: str, url: str, attempts: int, **kwargs: Any
) -> bytes:
    where = f"{method} {urlsplit(url).path}"  # the query holds the presigned signature
    backoff = Backoff()
    for attempt in range(1, attempts + 1):
        try:
            response = await http.request(method, url, **kwargs)
        except httpx.TransportError as e:
            problem = f"{type(e).__name__}: {e}"
        else:
            if response.is_success:
                return response.content
            problem = f"HTTP {response.status_code}"
            if response.status_code < 500 and response.status_code != 429:
                raise TransferFailed(f"{where}: {problem}")
        if attempt == attempts:
            raise TransferFailed(f"{where}: {problem} (after {attempts} attempts)")
        await trio.sleep(backoff.next())
    raise AssertionError("unreachable")
