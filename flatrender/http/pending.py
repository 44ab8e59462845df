"""Contract operations whose behaviour lands in a later issue answer 501, never 500.

The list is not kept by hand: every contract operation that no blueprint serves gets a
placeholder, so an operation stops being a placeholder the moment its real route exists.
Callers are still authenticated first, so a 501 is never a way around a 401.
"""

from __future__ import annotations

import re
from typing import Any

from quart import Quart, request

from flatrender.http.auth import require_admin
from flatrender.http.common import caller
from flatrender.http.errors import not_implemented
from flatrender.http.openapi import contract_operations

# Which issue brings each family of operations (path prefix after /v1).
OWNER_ISSUES = (
    ("/v1/internal/render/", 4),
    ("/v1/internal/nodes/", 3),
    ("/v1/renders", 4),
    ("/v1/snapshots", 5),
    ("/v1/exports", 5),
    ("/v1/nodes", 3),
    ("/v1/node-updates", 3),
)


def owner_issue(path: str) -> int:
    return next(issue for prefix, issue in OWNER_ISSUES if path.startswith(prefix))


def to_rule(path: str) -> str:
    return re.sub(r"\{(\w+)\}", r"<\1>", path)


def served(app: Quart, method: str, rule: str) -> bool:
    return any(r.rule == rule and method in (r.methods or ()) for r in app.url_map.iter_rules())


def register_placeholders(app: Quart) -> list[tuple[str, str]]:
    """Add a 501 route for each unserved contract operation; returns what was added."""
    added = []
    for method, path in sorted(contract_operations()):
        rule = to_rule(path)
        if served(app, method, rule):
            continue
        app.add_url_rule(
            rule,
            endpoint=f"pending {method} {path}",
            view_func=_placeholder(method, path),
            methods=[method],
        )
        added.append((method, path))
    return added


def _placeholder(method: str, path: str) -> Any:
    issue = owner_issue(path)
    admin_only = path.startswith(("/v1/nodes", "/v1/node-updates"))

    async def view(**_: str) -> Any:
        if not request.path.startswith("/v1/internal/"):
            principal = caller()
            if admin_only:
                require_admin(principal)
        raise not_implemented(f"{method} {path}", issue)

    return view
