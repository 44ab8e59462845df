"""What every handler needs: the app's state, the caller, the body, paging, path ids."""

from __future__ import annotations

import json
import re
from typing import Any, TypeVar
from uuid import UUID

import attrs
import trio
from quart import current_app, request

from flatrender.actors.system import ActorSystem
from flatrender.config import Config
from flatrender.domain.bounds import BIGINT
from flatrender.http.auth import Principal, authenticate
from flatrender.http.codec import parse_json, structure, unstorable
from flatrender.http.errors import unprocessable
from flatrender.persistence.db import Database
from flatrender.storage import ObjectStore

T = TypeVar("T")

MAX_PAGE_SIZE = 100
DEFAULT_PAGE_SIZE = 20
# Far past any real list, and (page - 1) × page_size stays well inside the bigint OFFSET.
MAX_PAGE = 1_000_000


@attrs.define
class AppState:
    """Shared by all handlers. ``config`` is replaced as a whole on SIGHUP, never mutated."""

    config: Config
    db: Database
    store: ObjectStore
    # Set by the composition root once the actor system is up (None in socket-free tests
    # that exercise only persistence-backed routes).
    actors: ActorSystem | None = None
    # Whether this daemon leads (DESIGN §8 [ha]): a standby answers /readyz 503. Without
    # [ha] enabled a daemon always leads; the leadership session clears it when it is lost.
    leading: bool = True
    # Set by Daemon.stop: a load balancer reading /readyz stops sending work here at once.
    draining: bool = False
    _reloaded: trio.Event = attrs.field(factory=trio.Event, init=False)

    def reload(self, config: Config) -> None:
        """Replace the configuration and wake whoever waits in :meth:`reloaded`."""
        self.config = config
        self._reloaded.set()
        self._reloaded = trio.Event()

    async def reloaded(self) -> Config:
        """The next configuration a reload sets."""
        await self._reloaded.wait()
        return self.config


def state() -> AppState:
    value = current_app.config["FLATRENDER_STATE"]
    assert isinstance(value, AppState)
    return value


def caller() -> Principal:
    return authenticate(request.headers.get("Authorization"), state().config.auth)


async def body(cls: type[T]) -> T:
    raw = await request.get_data(as_text=False)
    assert isinstance(raw, bytes)
    return structure(parse_json(raw), cls)


def refuse_unstorable_text() -> None:
    """Before every request: a query parameter (name or value) or a path parameter holding
    text the database cannot store (NUL, a lone surrogate) is a 422 naming it."""
    errors = []
    for name, value in request.args.items(multi=True):
        for text, what in ((name, "the name "), (value, "")):
            problem = unstorable(text)
            if problem:
                errors.append({"field": _escaped(name), "message": what + problem})
    for name, value in (request.view_args or {}).items():
        problem = unstorable(value) if isinstance(value, str) else None
        if problem:
            errors.append({"field": name, "message": problem})
    if errors:
        raise unprocessable("the request holds text that cannot be stored", errors)


def _escaped(name: str) -> str:
    return name if unstorable(name) is None else json.dumps(name)


def path_uuid(name: str, value: str) -> UUID:
    try:
        return UUID(value)
    except ValueError:
        raise unprocessable(
            f"{name} must be a uuid", [{"field": name, "message": f"{value!r} is not a uuid"}]
        ) from None


@attrs.frozen
class Page:
    page: int
    page_size: int

    @property
    def offset(self) -> int:
        return (self.page - 1) * self.page_size

    def meta(self, total: int) -> dict[str, Any]:
        return {
            "page": self.page,
            "page_size": self.page_size,
            "total": total,
            "has_more": self.offset + self.page_size < total,
        }


def page_from_query() -> Page:
    """``page`` from 1, ``page_size`` clamped to 1..100; non-integers and a ``page`` past
    :data:`MAX_PAGE` are a 422 naming the parameter."""
    page = query_int("page", 1)
    page_size = query_int("page_size", DEFAULT_PAGE_SIZE)
    if page > MAX_PAGE:
        raise unprocessable(
            "query parameter page is out of range",
            [{"field": "page", "message": f"must be at most {MAX_PAGE}"}],
        )
    return Page(max(page, 1), min(max(page_size, 1), MAX_PAGE_SIZE))


def query_int(name: str, default: int) -> int:
    """An optional integer query parameter: ASCII digits with an optional sign, within
    ``bigint``; anything else is a 422 naming it. The caller bounds it further."""
    text = request.args.get(name)
    if text is None or text == "":
        return default
    if not _INTEGER.fullmatch(text):
        raise unprocessable(
            f"query parameter {name} must be an integer",
            [{"field": name, "message": f"{text[:40]!r} is not an integer"}],
        )
    value = int(text)
    if value not in BIGINT:
        raise unprocessable(
            f"query parameter {name} is out of range",
            [{"field": name, "message": f"must be between {BIGINT.low} and {BIGINT.high}"}],
        )
    return value


# Not int()'s grammar: no spaces, underscores or non-ASCII digits, and too long is no number.
_INTEGER = re.compile(r"[+-]?[0-9]{1,30}")
