"""JSON in and out: the input boundary of every body, and cattrs structuring into attrs types.

Only ordinary JSON gets in: UTF-8, nested at most :data:`MAX_DEPTH` deep, numbers of at most
:data:`MAX_NUMBER_CHARS` characters that are finite (no ``NaN``, ``Infinity``, ``1e999``); any other
body is a 400 ``malformed_json``. Text the database cannot hold (NUL, a lone surrogate), in any
string or object key at any depth, is a 422 naming the field. Structuring never coerces: ``"5"``
is not an integer and ``1`` is not a string; every integer fits its column (``bigint``, or
``integer`` for fields typed :data:`flatrender.domain.bounds.Int4`). Failures become a 422 whose
details list each offending field as ``{"field": "$.a.b", "message": ...}``.
"""

from __future__ import annotations

import enum
import json
import math
import re
from collections.abc import Callable, Container, Iterable
from datetime import datetime
from itertools import accumulate
from typing import Annotated, Any, TypeVar, get_args, get_origin
from uuid import UUID

import cattrs
from cattrs.cols import is_sequence, list_structure_factory
from cattrs.errors import ClassValidationError, ForbiddenExtraKeysError, IterableValidationError

from flatrender.domain.bounds import BIGINT, Range
from flatrender.http.errors import ApiError, bad_request, unprocessable

T = TypeVar("T")

converter = cattrs.Converter()


def _structure_int(value: Any, _: type) -> int:
    return _bounded_int(value, BIGINT)


def _bounded_int(value: Any, bounds: Range) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"expected an integer, got {_json_type(value)}")
    if value not in bounds:
        raise ValueError(f"must be between {bounds.low} and {bounds.high}")
    return value


def _range_of(type_: Any) -> Range | None:
    if get_origin(type_) is not Annotated:
        return None
    return next((m for m in get_args(type_)[1:] if isinstance(m, Range)), None)


def _ranged_int_hook(type_: Any) -> Callable[[Any, Any], int]:
    bounds = _range_of(type_)
    assert bounds is not None
    return lambda value, _: _bounded_int(value, bounds)


def _structure_float(value: Any, _: type) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"expected a number, got {_json_type(value)}")
    result = float(value)  # finite: parse_json admits no int too long to convert
    if not math.isfinite(result):
        raise ValueError("must be a finite number")
    return result


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


def _strict_list_hook(type_: Any, conv: cattrs.Converter) -> Callable[[Any, Any], Any]:
    """A JSON array and nothing else: cattrs alone would take ``"Free"`` as ``['F', 'r', ...]``."""
    inner = list_structure_factory(type_, conv)

    def structure_list(value: Any, cls: Any) -> Any:
        if not isinstance(value, list):
            raise TypeError(f"expected an array, got {_json_type(value)}")
        return inner(value, cls)

    return structure_list


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    return {dict: "an object", list: "an array", str: "a string", bool: "a boolean"}.get(
        type(value), type(value).__name__
    )


def unstructure_datetime(value: datetime) -> str:
    return value.isoformat().replace("+00:00", "Z")


converter.register_structure_hook(int, _structure_int)
converter.register_structure_hook_factory(lambda t: _range_of(t) is not None, _ranged_int_hook)
converter.register_structure_hook_factory(is_sequence, _strict_list_hook)
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


# Far deeper than any body of the API (3 or 4 levels), far below the decoder's recursion limit.
MAX_DEPTH = 64
# bigint has 19 digits; a longer number is no quantity any field holds.
MAX_NUMBER_CHARS = 100
# The most offending strings one 422 lists.
MAX_TEXT_ERRORS = 20

# A JSON string, or the rest of the body when it never closes: linear, never backtracks.
_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"?', re.DOTALL)
_NOT_BRACKETS = bytes(b for b in range(256) if b not in b"[]{}")
_NESTING = [0] * 256
_NESTING[ord("[")] = _NESTING[ord("{")] = 1
_NESTING[ord("]")] = _NESTING[ord("}")] = -1
# NUL, and any surrogate left after decoding: a valid pair became one astral character.
_UNSTORABLE = re.compile(r"[\x00\ud800-\udfff]")
_UNSTORABLE_ESCAPE = re.compile(r"\\u(?:0000|d[89a-f])", re.IGNORECASE)
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")


class _NotOrdinary(ValueError):
    """Raised by the decoder hooks; the body is a 400."""


def _parse_int(text: str) -> int:
    if len(text) > MAX_NUMBER_CHARS:
        raise _NotOrdinary(f"a number is longer than {MAX_NUMBER_CHARS} characters")
    return int(text)


def _parse_float(text: str) -> float:
    if len(text) > MAX_NUMBER_CHARS:
        raise _NotOrdinary(f"a number is longer than {MAX_NUMBER_CHARS} characters")
    value = float(text)
    if not math.isfinite(value):
        raise _NotOrdinary(f"{text} is beyond the range of a number")
    return value


def _parse_constant(name: str) -> Any:
    raise _NotOrdinary(f"{name} is not a JSON number")


def nesting_depth(raw: bytes) -> int:
    """How deep arrays and objects nest in ``raw`` (UTF-8), without parsing or recursing.

    Brackets inside strings do not count. On malformed input the figure may be too high, never
    too low, and the decoder refuses such input anyway.
    """
    brackets = _STRING.sub(b"", raw).translate(None, _NOT_BRACKETS)
    return max(accumulate(map(_NESTING.__getitem__, brackets)), default=0)


def parse_json(raw: bytes) -> Any:
    """Decode a request body: 400 unless it is ordinary JSON, 422 for text no column can hold."""
    if not raw.strip():
        raise bad_request("malformed_json", "the request body is empty; a JSON object is expected")
    # Counting brackets is a fast scan; only a body with more than MAX_DEPTH of them (none of
    # the API's ordinary ones) is measured.
    brackets = raw.count(b"[") + raw.count(b"{")
    if brackets > MAX_DEPTH and nesting_depth(raw) > MAX_DEPTH:
        raise bad_request("malformed_json", f"the request body nests deeper than {MAX_DEPTH}")
    try:
        text = raw.decode("utf-8")
        data = json.loads(
            text,
            parse_int=_parse_int,
            parse_float=_parse_float,
            parse_constant=_parse_constant,
        )
    except UnicodeDecodeError:
        raise bad_request("malformed_json", "the request body is not UTF-8") from None
    except (_NotOrdinary, json.JSONDecodeError) as e:
        raise bad_request("malformed_json", f"the request body is not valid JSON: {e}") from None
    # Such text can only arrive as a \u escape (the decoder refuses raw NUL, and the strict
    # UTF-8 decode any encoded surrogate): most bodies skip the walk.
    errors = text_errors(data) if _UNSTORABLE_ESCAPE.search(text) else []
    if errors:
        raise unprocessable("the request body holds text that cannot be stored", errors)
    return data


# Where a value sits: (its container's place, its key or index), None for the root.
_Place = tuple[Any, str | int] | None


def text_errors(data: Any, root: str = "$") -> list[dict[str, str]]:
    """Every string or object key in decoded JSON that holds NUL or a lone surrogate (at most
    :data:`MAX_TEXT_ERRORS`), as 422 details. Iterative, so depth costs no stack; a field's
    path is spelled out only when it is reported."""
    errors: list[dict[str, str]] = []
    if isinstance(data, str) and (problem := unstorable(data)):
        errors.append({"field": root, "message": problem})
    pending: list[tuple[_Place, Any]] = [(None, data)]
    while pending and len(errors) < MAX_TEXT_ERRORS:
        place, container = pending.pop()
        members: Iterable[tuple[Any, Any]] = ()
        if isinstance(container, dict):
            members = container.items()
        elif isinstance(container, list):
            members = enumerate(container)
        nested = []
        for key, item in members:
            if len(errors) >= MAX_TEXT_ERRORS:
                break  # one container may hold any number of bad strings: stop at the cap
            if isinstance(key, str) and (problem := unstorable(key)):
                field = _spell(root, (place, key))
                errors.append({"field": field, "message": f"the key {problem}"})
            if isinstance(item, str):
                if problem := unstorable(item):
                    errors.append({"field": _spell(root, (place, key)), "message": problem})
            elif isinstance(item, list | dict):
                nested.append(((place, key), item))
        pending.extend(reversed(nested))
    return errors[:MAX_TEXT_ERRORS]


def _spell(root: str, place: _Place) -> str:
    keys: list[str | int] = []
    while place is not None:
        place, key = place
        keys.append(key)
    path = root
    for key in reversed(keys):
        path = member_path(path, key)
    return path


def unstorable(text: str) -> str | None:
    """Why PostgreSQL could not store ``text``, or None when it can."""
    found = _UNSTORABLE.search(text)
    if found is None:
        return None
    if found.group() == "\x00":
        return "must not contain NUL characters"
    return f"must not contain a lone surrogate (U+{ord(found.group()):04X})"


def member_path(path: str, key: str | int) -> str:
    """``$.name`` for a plain key, ``$[3]`` for an index; any other key JSON-escaped:
    ``$["a b"]``."""
    if isinstance(key, int):
        return f"{path}[{key}]"
    if _NAME.match(key):
        return f"{path}.{key}"
    return f"{path}[{json.dumps(key)}]"


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
