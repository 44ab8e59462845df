"""The Quart-Trio application: routes under /v1, one error format, no business rules."""

from __future__ import annotations

from typing import Any

from quart import Response, jsonify
from quart_trio import QuartTrio

from flatrender.http import (
    billing,
    catalog,
    exports,
    internal,
    node_updates,
    nodes,
    ops,
    render_actions,
    renders,
    snapshots,
    ws,
)
from flatrender.http.common import AppState, refuse_unstorable_text
from flatrender.http.connection_guard import guard_connection_close
from flatrender.http.coverage import require_contract_served
from flatrender.http.errors import register_error_handlers
from flatrender.http.openapi import openapi_document

# Node reports and API bodies are small; anything bigger is a mistake or an attack.
MAX_BODY_BYTES = 1024 * 1024


def create_app(app_state: AppState) -> QuartTrio:
    app = QuartTrio("flatrender")
    app.config["FLATRENDER_STATE"] = app_state
    app.config["MAX_CONTENT_LENGTH"] = MAX_BODY_BYTES
    app.config["JSON_SORT_KEYS"] = False
    app.json.sort_keys = False  # type: ignore[attr-defined]
    register_error_handlers(app)
    app.before_request(refuse_unstorable_text)
    blueprints = (
        catalog.bp,
        billing.bp,
        internal.bp,
        nodes.bp,
        node_updates.bp,
        renders.bp,
        render_actions.bp,
        exports.bp,
        snapshots.bp,
        ws.bp,
        ops.bp,
    )
    for blueprint in blueprints:
        app.register_blueprint(blueprint)

    @app.get("/v1/openapi.json")
    async def served_openapi() -> Response:
        return jsonify(_OPENAPI)

    @app.get("/healthz")
    async def healthz() -> dict[str, Any]:
        await app_state.db.fetchval("SELECT 1")
        return {"status": "ok"}

    require_contract_served(app)
    app.asgi_app = guard_connection_close(app.asgi_app)  # type: ignore[method-assign,assignment]
    return app


_OPENAPI = openapi_document()
