"""schemathesis hooks for the node run (``SCHEMATHESIS_HOOKS=tests.fuzz.hooks``).

Every ``/v1/internal/*`` request is signed as DESIGN §4 says, for the registered node named by
``FUZZ_NODE_ID`` / ``FUZZ_NODE_SECRET``: the node in the path (or ``node_id`` in the body) is that
node, so requests get past authentication and reach the handlers. The signature is computed by a
``requests`` auth object over the prepared request, i.e. over the exact bytes sent, with a fresh
``t`` per request. ``FUZZ_JOB_ID``, when set, stands in for a generated ``job_id`` in the path so
the render reports meet a real job.
"""

from __future__ import annotations

import os
import time
from typing import Any
from urllib.parse import urlsplit

import requests
import schemathesis

from flatrender.domain.signing import HEADER, sign


class NodeSignature(requests.auth.AuthBase):
    def __init__(self, secret: str) -> None:
        self.secret = secret

    def __call__(self, request: requests.PreparedRequest) -> requests.PreparedRequest:
        body = request.body or b""
        raw = body.encode() if isinstance(body, str) else body
        path = urlsplit(request.path_url).path
        stamp = int(time.time())
        request.headers[HEADER] = sign(self.secret, stamp, request.method or "GET", path, raw)
        return request


@schemathesis.hook
def before_call(context: Any, case: Any, kwargs: dict[str, Any]) -> None:
    node_id, secret = os.environ.get("FUZZ_NODE_ID"), os.environ.get("FUZZ_NODE_SECRET")
    if not node_id or not secret or "/internal/" not in case.path:
        return
    params = case.path_parameters
    if params is not None and "node_id" in params:
        params["node_id"] = node_id
    job_id = os.environ.get("FUZZ_JOB_ID")
    if job_id and params is not None and "job_id" in params:
        params["job_id"] = job_id
    # The render reports are signed by the node named in the body (DESIGN §4), which the
    # contract's frames body does not list: name the node in every one.
    if isinstance(case.body, dict) and (
        "node_id" in case.body or case.path.startswith("/internal/render/jobs/")
    ):
        case.body["node_id"] = node_id
    kwargs["auth"] = NodeSignature(secret)
