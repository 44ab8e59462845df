"""``flatrender submit``: start a render from the terminal, as a new user would (issue 11).

``POST /v1/renders`` with the user token of ``.state/dev.json`` (or ``--token``); ``--demo``
takes the first of dev.json's ``demo_project_ids``. Prints the job id and its price; with
``--watch`` follows it with ``flatrender watch`` and returns that command's exit status.
An error answer prints the API's message (and a 422's fields). Exit status without
``--watch``: 0 submitted, 1 the API refused the job (402 balance, 404 project, 422 ...),
2 refused the token (401/403, e.g. ``price_type_not_allowed``), 3 unreachable, 4 server error.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, TextIO
from uuid import UUID

import httpx
import trio

from flatrender import watch
from flatrender.status_cli import api_base, dev_defaults, error_text

OK, REJECTED, REFUSED, UNREACHABLE, SERVER_ERROR = 0, 1, 2, 3, 4
TIMEOUT_SEC = 30.0


class NoProject(Exception):
    """Neither a PROJECT_ID nor a demo project in dev.json."""


def demo_project(dev: dict[str, Any]) -> UUID:
    ids = dev.get("demo_project_ids") or []
    if not ids:
        raise NoProject("no demo_project_ids in dev.json: run `make dev` first, or give PROJECT_ID")
    return UUID(str(ids[0]))


def render_body(project: UUID, quality: str, resolution: str) -> dict[str, Any]:
    return {"saved_project_id": str(project), "quality": quality, "resolution": resolution}


def outcome(status: int) -> int:
    """The exit status of an error answer."""
    if status in (401, 403):
        return REFUSED
    return SERVER_ERROR if status >= 500 else REJECTED


async def submit(
    api: str, token: str, body: dict[str, Any], out: TextIO, err: TextIO
) -> tuple[int, UUID | None]:
    """Submit; the exit status and the new job's id (None when it was not created)."""
    headers = {"Authorization": f"Bearer {token}"}
    try:
        async with httpx.AsyncClient(base_url=api, timeout=TIMEOUT_SEC) as http:
            response = await http.post("/v1/renders", json=body, headers=headers)
    except httpx.TransportError as e:
        print(f"flatrender submit: cannot reach {api}: {e or type(e).__name__}", file=err)
        return UNREACHABLE, None
    if response.status_code != 201:
        print(f"flatrender submit: {error_text(response)}", file=err)
        return outcome(response.status_code), None
    job = response.json()
    print(
        f"job {job['id']} {job['step']}: {job['name']}, {job['quality']} {job['resolution']}, "
        f"price {job['paid_price_minor']} (minor units)",
        file=out,
        flush=True,
    )
    return OK, UUID(job["id"])


def run_submit(
    project: UUID | None,
    *,
    demo: bool,
    quality: str,
    resolution: str,
    api: str | None,
    token: str | None,
    follow: bool,
    state_dir: Path,
) -> int:
    dev = dev_defaults(state_dir)
    try:
        if demo == (project is not None):
            raise NoProject("give PROJECT_ID or --demo (one of them)")
        chosen = demo_project(dev) if project is None else project
    except NoProject as e:
        print(f"flatrender submit: {e}", file=sys.stderr)
        return REJECTED
    base = api_base(api, dev)
    user_token = token or str(dev.get("user_token") or "")
    body = render_body(chosen, quality, resolution)

    async def main() -> int:
        status, job_id = await submit(base, user_token, body, sys.stdout, sys.stderr)
        if not follow or job_id is None:
            return status
        t = watch.target(job_id, api, user_token, state_dir)
        return await watch.watch(t, sys.stdout, sys.stderr, tty=sys.stdout.isatty())

    return trio.run(main)
