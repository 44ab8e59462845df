"""The contract check every test client runs (tests/conformance.py) catches what it should."""

from __future__ import annotations

import json
from typing import Any

import pytest

from tests.conformance import NonConformance, check_response

NODE = "/v1/nodes/9a0ae5bb-8ef4-4b8a-9b1b-3c2f0d1a4e55"
JOB = "/v1/renders/9a0ae5bb-8ef4-4b8a-9b1b-3c2f0d1a4e55"


def check(method: str, path: str, status: int, body: Any, ctype: str = "application/json") -> None:
    check_response(method, path, status, ctype, json.dumps(body).encode())


def test_a_null_the_contract_does_not_allow_is_refused() -> None:
    with pytest.raises(NonConformance, match=r"last_heartbeat_at: None is not of type"):
        check("GET", NODE, 200, {"id": NODE[-36:], "last_heartbeat_at": None})
    check("GET", NODE, 200, {"id": NODE[-36:], "current_job_id": None})


def test_nullable_beside_a_ref_admits_null_and_still_checks_the_object() -> None:
    check("GET", JOB, 200, {"id": JOB[-36:], "export": None, "frame_jobs": []})
    with pytest.raises(NonConformance, match=r"export.size_bytes"):
        check("GET", JOB, 200, {"id": JOB[-36:], "export": {"size_bytes": "big"}})


def test_formats_are_checked() -> None:
    with pytest.raises(NonConformance, match="is not a 'date-time'"):
        check("GET", JOB, 200, {"queued_at": "yesterday"})
    with pytest.raises(NonConformance, match="is not a 'uuid'"):
        check("GET", JOB, 200, {"id": "42"})


def test_errors_must_use_the_error_format() -> None:
    check("GET", JOB, 404, {"error": {"code": "not_found", "message": "no", "details": {}}})
    with pytest.raises(NonConformance, match="'error' is a required property"):
        check("GET", JOB, 404, {"detail": "no"})
    with pytest.raises(NonConformance, match="content type"):
        check("GET", JOB, 404, "no", ctype="text/html")


def test_an_undocumented_error_status_is_refused_even_in_the_error_format() -> None:
    with pytest.raises(NonConformance, match="status not documented"):
        check("GET", JOB, 418, {"error": {"code": "teapot", "message": "no"}})
    # The framework's own answers, which any operation may give, still need the error format.
    check("GET", JOB, 413, {"error": {"code": "too_large", "message": "no"}})
    with pytest.raises(NonConformance, match="'error' is a required property"):
        check("GET", JOB, 405, {"detail": "no"})


def test_undocumented_success_is_refused() -> None:
    with pytest.raises(NonConformance, match="no such operation"):
        check("GET", "/v1/nowhere", 200, {})
    with pytest.raises(NonConformance, match="status not documented"):
        check("GET", JOB, 299, {})
    with pytest.raises(NonConformance, match="204 with a body"):
        check_response("DELETE", "/v1/exports/9a0ae5bb-8ef4-4b8a-9b1b-3c2f0d1a4e55", 204, "", b"x")


def test_paths_outside_the_api_are_not_checked() -> None:
    check_response("GET", "/livez", 200, "text/plain", b"ok")
    check_response("PUT", "/flatrender-test/renders/x.mp4", 200, "", b"")
