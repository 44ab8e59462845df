"""Every contract operation has a route: checked when the app is built, so a contract operation
without a handler stops the daemon at start-up instead of answering 404 to its callers."""

from __future__ import annotations

import re

from quart import Quart

from flatrender.http.openapi import contract_operations


def to_rule(path: str) -> str:
    return re.sub(r"\{(\w+)\}", r"<\1>", path)


def unserved(app: Quart) -> list[tuple[str, str]]:
    """The contract's (method, path) pairs that no route of ``app`` serves."""
    routes = {
        (rule.rule, method) for rule in app.url_map.iter_rules() for method in rule.methods or ()
    }
    return sorted(
        (method, path)
        for method, path in contract_operations()
        if (to_rule(path), method) not in routes
    )


def require_contract_served(app: Quart) -> None:
    missing = unserved(app)
    if missing:
        raise RuntimeError(f"contract operations without a route: {missing}")
