"""The one error format of the API (DESIGN §5) and the handlers that enforce it.

Every failure leaves as ``{"error": {"code", "message", "details"}}``: client mistakes as 4xx,
unavailable dependencies as 503, object storage refusing an operation (403 AccessDenied, ...)
as 502, and anything unexpected as a bare 500 that carries no trace.
"""

from __future__ import annotations

import logging
from typing import Any

from quart import Quart, Response, jsonify
from werkzeug.exceptions import HTTPException

from flatrender.persistence.db import DatabaseUnavailable, DataRefused
from flatrender.storage import StorageError, StorageUnavailable

log = logging.getLogger("flatrender.http")


class ApiError(Exception):
    """Raised anywhere below a handler; becomes the JSON error body with ``status``."""

    def __init__(
        self, status: int, code: str, message: str, details: dict[str, Any] | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.details = details or {}


def bad_request(code: str, message: str, **details: Any) -> ApiError:
    return ApiError(400, code, message, details)


def unauthorized(message: str = "authentication required") -> ApiError:
    return ApiError(401, "unauthorized", message)


def forbidden(message: str = "not allowed") -> ApiError:
    return ApiError(403, "forbidden", message)


def not_found(what: str, ident: object = None) -> ApiError:
    details = {} if ident is None else {"id": str(ident)}
    return ApiError(404, "not_found", f"{what} not found", details)


def conflict(code: str, message: str, **details: Any) -> ApiError:
    return ApiError(409, code, message, details)


def insufficient_balance(what: str, balance_minor: int, price_minor: int) -> ApiError:
    """402 when the balance does not cover the price of ``what`` (nothing was written)."""
    return ApiError(
        402,
        "insufficient_balance",
        f"the balance does not cover the price of {what}",
        {"balance_minor": balance_minor, "price_minor": price_minor},
    )


def unprocessable(message: str, errors: list[dict[str, str]]) -> ApiError:
    return ApiError(422, "validation_failed", message, {"errors": errors})


def error_response(
    status: int, code: str, message: str, details: dict[str, Any] | None = None
) -> Response:
    body = {"error": {"code": code, "message": message, "details": details or {}}}
    response = jsonify(body)
    response.status_code = status
    return response


_HTTP_CODES = {
    400: "bad_request",
    404: "not_found",
    405: "method_not_allowed",
    413: "payload_too_large",
    415: "unsupported_media_type",
}


def register_error_handlers(app: Quart) -> None:
    @app.errorhandler(ApiError)
    async def _api_error(error: ApiError) -> Response:
        return error_response(error.status, error.code, error.message, error.details)

    @app.errorhandler(HTTPException)
    async def _http_error(error: HTTPException) -> Response:
        status = error.code or 500
        code = _HTTP_CODES.get(status, "http_error")
        message = "no such endpoint" if status == 404 else (error.description or error.name)
        return error_response(status, code, message)

    @app.errorhandler(DatabaseUnavailable)
    async def _db_unavailable(error: DatabaseUnavailable) -> Response:
        log.warning("database unavailable: %s", error)
        return error_response(503, "database_unavailable", "the database is unavailable, retry")

    @app.errorhandler(DataRefused)
    async def _data_refused(error: DataRefused) -> Response:
        # A value of the request the database cannot hold (NUL in text, a number out of
        # range): the client's to fix, never an outage.
        log.warning(
            "the database refused a value of the request (%s): %s", error.sqlstate, error.reason
        )
        message = f"a value of the request was refused: {error.reason}"
        return error_response(
            422,
            "validation_failed",
            message,
            {"errors": [{"field": "$", "message": error.reason}]},
        )

    @app.errorhandler(StorageUnavailable)
    async def _storage_unavailable(error: StorageUnavailable) -> Response:
        log.warning("object storage unavailable: %s", error)
        return error_response(
            503, "storage_unavailable", "object storage is unavailable, retry later"
        )

    # Lookup follows the exception's MRO: StorageUnavailable keeps its 503 above.
    @app.errorhandler(StorageError)
    async def _storage_refused(error: StorageError) -> Response:
        log.error("object storage refused an operation: %s", error)
        return error_response(502, "storage_error", "object storage refused the operation")

    @app.errorhandler(Exception)
    async def _unexpected(error: Exception) -> Response:
        log.exception("unhandled error in request")
        return error_response(500, "internal_error", "internal error")
