"""Contract operations whose behaviour lands in a later issue answer 501, never 500.

The list is not kept by hand: every contract operation that no blueprint serves gets a
placeholder, so an operation stops being a placeholder the moment its real route exists.
Callers are still authenticated first, so a 501 is never a way around a 401.
"""

from __future__ import annotations

import re
from typing import Any

from quart import Quart

from flatrender.http.common import caller
from flatrender.http.errors import not_implemented
from flatrender.http.openapi import contract_operations

# Which issue brings each family of operations still unserved (path prefix).
OWNER_ISSUES = (("/v1/exports", 5),)


def owner_issue(path: str) -> int:
    for prefix, issue in OWNER_ISSUES:
        if path.startswith(prefix):
            return issue
    raise RuntimeError(f"contract operation {path} is neither served nor owned by an issue")


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

    async def view(**_: str) -> Any:
        caller()  # authenticated first: a 501 is never a way around a 401
        raise not_implemented(f"{method} {path}", issue)

    return view
