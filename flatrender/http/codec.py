"""JSON in and out: cattrs structuring of request bodies into attrs types, with strict types.

Structuring never coerces: ``"5"`` is not an integer and ``1`` is not a string. Failures become a
422 whose details list each offending field as ``{"field": "$.a.b", "message": ...}``; a body that
is not JSON at all is a 400.
"""

from __future__ import annotations

import enum
import json
from collections.abc import Container, Iterable
from datetime import datetime
from typing import Any, TypeVar
from uuid import UUID

import cattrs
from cattrs.errors import ClassValidationError, ForbiddenExtraKeysError, IterableValidationError

from flatrender.http.errors import ApiError, bad_request, unprocessable

T = TypeVar("T")

converter = cattrs.Converter()


def _structure_int(value: Any, _: type) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"expected an integer, got {_json_type(value)}")
    return value


def _structure_float(value: Any, _: type) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"expected a number, got {_json_type(value)}")
    return float(value)


def _structure_str(value: Any, _: type) -> str:
    if not isinstance(value, str):
        raise TypeError(f"expected a string, got {_json_type(value)}")
    return value


def _structure_bool(value: Any, _: type) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"expected true or false, got {_json_type(value)}")
    return value


def _structure_uuid(value: Any, _: type) -> UUID:
    if not isinstance(value, str):
        raise TypeError(f"expected a uuid string, got {_json_type(value)}")
    try:
        return UUID(value)
    except ValueError:
        raise ValueError(f"{value!r} is not a uuid") from None


def _structure_datetime(value: Any, _: type) -> datetime:
    if not isinstance(value, str):
        raise TypeError(f"expected an ISO 8601 date-time string, got {_json_type(value)}")
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(f"{value!r} is not an ISO 8601 date-time") from None
    if parsed.tzinfo is None:
        raise ValueError(f"{value!r} has no time zone")
    return parsed


def _structure_enum(value: Any, cls: type[enum.Enum]) -> enum.Enum:
    try:
        return cls(value)
    except ValueError:
        allowed = ", ".join(str(m.value) for m in cls)
        raise ValueError(f"{value!r} is not one of: {allowed}") from None


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    return {dict: "an object", list: "an array", str: "a string", bool: "a boolean"}.get(
        type(value), type(value).__name__
    )


def unstructure_datetime(value: datetime) -> str:
    return value.isoformat().replace("+00:00", "Z")


converter.register_structure_hook(int, _structure_int)
converter.register_structure_hook(float, _structure_float)
converter.register_structure_hook(str, _structure_str)
converter.register_structure_hook(bool, _structure_bool)
converter.register_structure_hook(UUID, _structure_uuid)
converter.register_structure_hook(datetime, _structure_datetime)
converter.register_structure_hook_func(
    lambda t: isinstance(t, type) and issubclass(t, enum.Enum), _structure_enum
)
converter.register_unstructure_hook(UUID, str)
converter.register_unstructure_hook(datetime, unstructure_datetime)
converter.register_unstructure_hook_func(
    lambda t: isinstance(t, type) and issubclass(t, enum.Enum), lambda e: e.value
)


def parse_json(raw: bytes) -> Any:
    """Decode a request body; malformed JSON is a 400."""
    if not raw.strip():
        raise bad_request("malformed_json", "the request body is empty; a JSON object is expected")
    try:
        return json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise bad_request("malformed_json", f"the request body is not valid JSON: {e}") from None


def structure(data: Any, cls: type[T]) -> T:
    """Structure decoded JSON into ``cls``; any mismatch is one 422 listing every field."""
    if not isinstance(data, dict):
        raise unprocessable(
            "the request body must be a JSON object",
            [{"field": "$", "message": f"expected an object, got {_json_type(data)}"}],
        )
    try:
        return converter.structure(data, cls)
    except (ClassValidationError, IterableValidationError, ForbiddenExtraKeysError) as e:
        errors = _field_errors(e)
        raise unprocessable("the request body is invalid: " + _summary(errors), errors) from None
    except (TypeError, ValueError) as e:
        raise unprocessable(str(e), [{"field": "$", "message": str(e)}]) from None


def _field_errors(error: BaseException) -> list[dict[str, str]]:
    out = []
    for line in cattrs.transform_error(error, path="$", format_exception=_format):
        message, _, field = line.rpartition(" @ ")
        out.append({"field": field, "message": message})
    return out


def _format(exc: BaseException, type_: type | None) -> str:
    if isinstance(exc, KeyError):
        return "required field missing"
    if isinstance(exc, TypeError | ValueError) and str(exc):
        return str(exc)
    return cattrs.v.format_exception(exc, type_)


def _summary(errors: list[dict[str, str]]) -> str:
    return "; ".join(f"{e['field']}: {e['message']}" for e in errors)


def dump(value: Any) -> Any:
    """attrs instances (and containers of them) to JSON-ready data."""
    return converter.unstructure(value)


def pick(
    data: dict[str, Any], keys: Iterable[str], *, absent_when_none: Container[str] = ()
) -> dict[str, Any]:
    """``keys`` of ``data``, in order; those in ``absent_when_none`` are left out while None.

    The contract has such fields optional but not nullable: a typed client accepts them missing,
    never ``null``.
    """
    return {key: data[key] for key in keys if data[key] is not None or key not in absent_when_none}


__all__ = [
    "ApiError",
    "converter",
    "dump",
    "parse_json",
    "pick",
    "structure",
    "unstructure_datetime",
]
