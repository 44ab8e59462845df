"""Every response the tests receive is checked against the served OpenAPI document.

The served document (``/v1/openapi.json``, :func:`openapi_document`) is a superset of the
contract, so a body that conforms to it conforms to the contract. OpenAPI 3.0 schemas are turned
into JSON Schema 2020-12 once: ``nullable: true`` admits ``null`` (also beside a ``$ref``, where
the contract writes it), and nothing else does. Validators are compiled once per
(operation, status) and cached.

What is checked, for a request under ``/v1/``:
- the operation exists (a 2xx for an undocumented path or method is a failure);
- a documented status with a JSON schema validates against it (one documented without content
  may carry anything, but a 204 nothing);
- a status the operation does not document fails (405 and 413 aside, which any operation may
  answer; their body must still be the ``{"error": {...}}`` format);
- every JSON error body is the ``Error`` schema.
Paths outside ``/v1/`` (``/livez``, ``/metrics``, S3, webhooks) are not the contract's.
"""

from __future__ import annotations

import functools
import json
import re
from typing import Any

import jsonschema
from jsonschema.exceptions import best_match
from jsonschema.protocols import Validator

from flatrender.http.openapi import openapi_document

__all__ = ["NonConformance", "check_response"]

Json = dict[str, Any]
PREFIX = "/v1"


# Statuses any operation may answer without documenting them: the framework's own (an unknown
# method, a body over the size limit) and a gateway's.
_UNDOCUMENTABLE = frozenset({405, 413})


class NonConformance(AssertionError):
    """A response the contract does not allow."""


def check_response(method: str, path: str, status: int, content_type: str, body: bytes) -> None:
    """Raise :class:`NonConformance` if this response breaks the served document."""
    path = path.split("?", 1)[0]
    if not path.startswith(PREFIX + "/"):
        return
    where = f"{method.upper()} {path} -> {status}"
    operation = _find_operation(method.lower(), path[len(PREFIX) :])
    if operation is None:
        if status < 400:
            raise NonConformance(f"{where}: no such operation in the served document")
        _check_error(where, content_type, body)
        return
    template, responses = operation
    key = str(status) if str(status) in responses else "default"
    if key not in responses:
        # A typed client generated from the document rejects a status it does not know,
        # error or not (schemathesis's status_code_conformance fails it too).
        if status not in _UNDOCUMENTABLE:
            raise NonConformance(f"{where}: status not documented for {template}")
        _check_error(where, content_type, body)
        return
    validator = _validator(method.lower(), template, key)
    if validator is None:
        # Documented without content: a typed client reads nothing, whatever comes.
        if status == 204 and body.strip():
            raise NonConformance(f"{where}: 204 with a body {body[:200]!r}")
        if status >= 400 and body.strip():
            _check_error(where, content_type, body)
        return
    _validate(where, validator, content_type, body)


def _check_error(where: str, content_type: str, body: bytes) -> None:
    _validate(where, _error_validator(), content_type, body)


def _validate(where: str, validator: Validator, content_type: str, body: bytes) -> None:
    if not content_type.startswith("application/json"):
        raise NonConformance(f"{where}: content type {content_type!r}, JSON documented")
    try:
        data = json.loads(body)
    except ValueError as e:
        raise NonConformance(f"{where}: body is not JSON ({e}): {body[:200]!r}") from None
    # best_match descends into anyOf (a nullable $ref) to name the field that is wrong.
    found = (best_match([e]) for e in validator.iter_errors(data))
    errors = sorted((e for e in found if e is not None), key=lambda e: list(e.absolute_path))
    if errors:
        lines = [f"  $.{'.'.join(map(str, e.absolute_path))}: {e.message}" for e in errors[:10]]
        raise NonConformance(f"{where}: body does not conform\n" + "\n".join(lines))


# ------------------------------------------------------------------ the document, compiled once


@functools.cache
def _document() -> Json:
    return _to_json_schema(openapi_document())  # type: ignore[no-any-return]


@functools.cache
def _routes() -> list[tuple[re.Pattern[str], str]]:
    """Path templates as patterns, literal ones first (``/renders/estimate`` before ``{id}``)."""
    templates = sorted(_document()["paths"], key=lambda t: (t.count("{"), t))
    return [
        (re.compile("^" + re.sub(r"\\\{[^}]+\\\}", "[^/]+", re.escape(t)) + "$"), t)
        for t in templates
    ]


def _find_operation(method: str, path: str) -> tuple[str, Json] | None:
    paths = _document()["paths"]
    for pattern, template in _routes():
        if pattern.match(path) and method in paths[template]:
            return template, paths[template][method]["responses"]
    return None


@functools.cache
def _validator(method: str, template: str, status: str) -> Validator | None:
    doc = _document()
    response = doc["paths"][template][method]["responses"][status]
    while "$ref" in response:
        response = _pointer(doc, response["$ref"])
    media = response.get("content", {}).get("application/json")
    if media is None or "schema" not in media:
        return None
    return _compile(media["schema"])


@functools.cache
def _error_validator() -> Validator:
    return _compile({"$ref": "#/components/schemas/Error"})


def _compile(schema: Json) -> Validator:
    root = {**schema, "components": _document()["components"]}
    cls = jsonschema.Draft202012Validator
    cls.check_schema(root)
    return cls(root, format_checker=cls.FORMAT_CHECKER)


def _pointer(doc: Json, ref: str) -> Json:
    node: Any = doc
    for part in ref.removeprefix("#/").split("/"):
        node = node[part]
    return node  # type: ignore[no-any-return]


def _to_json_schema(node: Any) -> Any:
    """OpenAPI 3.0 -> JSON Schema 2020-12: ``nullable`` becomes an explicit ``null``."""
    if isinstance(node, list):
        return [_to_json_schema(item) for item in node]
    if not isinstance(node, dict):
        return node
    out = {key: _to_json_schema(value) for key, value in node.items() if key != "nullable"}
    if node.get("nullable") is True:
        if "type" in out and "$ref" not in out:
            out["type"] = [out["type"], "null"]
            if "enum" in out:
                out["enum"] = [*out["enum"], None]
        else:
            out = {"anyOf": [out, {"type": "null"}]}
    elif "$ref" in out and len(out) > 1:
        # OpenAPI 3.0 ignores a $ref's siblings; keep only the reference.
        out = {"$ref": out["$ref"]}
    return out


# ------------------------------------------------------------------ the hooks the test clients use


def install(monkeypatch: Any) -> None:
    """Check every response of Quart test clients and httpx clients in this test."""
    import httpx
    from quart.testing import QuartClient

    make_request = QuartClient._make_request

    async def checked_make_request(self: Any, path: str, method: str, *args: Any, **kw: Any) -> Any:
        response = await make_request(self, path, method, *args, **kw)
        body = await response.get_data()
        check_response(method, path, response.status_code, response.content_type or "", body)
        return response

    async_send = httpx.AsyncClient.send
    sync_send = httpx.Client.send

    async def checked_async_send(self: Any, request: httpx.Request, **kw: Any) -> Any:
        response = await async_send(self, request, **kw)
        if not kw.get("stream"):
            _check_httpx(request, response)
        return response

    def checked_sync_send(self: Any, request: httpx.Request, **kw: Any) -> Any:
        response = sync_send(self, request, **kw)
        if not kw.get("stream"):
            _check_httpx(request, response)
        return response

    monkeypatch.setattr(QuartClient, "_make_request", checked_make_request)
    monkeypatch.setattr(httpx.AsyncClient, "send", checked_async_send)
    monkeypatch.setattr(httpx.Client, "send", checked_sync_send)


def _check_httpx(request: Any, response: Any) -> None:
    content_type = response.headers.get("content-type", "")
    check_response(
        request.method, request.url.path, response.status_code, content_type, response.content
    )
