"""What every handler needs: the app's state, the caller, the body, paging, path ids."""

from __future__ import annotations

from typing import Any, TypeVar
from uuid import UUID

import attrs
import trio
from quart import current_app, request

from flatrender.actors.system import ActorSystem
from flatrender.config import Config
from flatrender.http.auth import Principal, authenticate
from flatrender.http.codec import parse_json, structure
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
    page = _query_int("page", 1)
    page_size = _query_int("page_size", DEFAULT_PAGE_SIZE)
    if page > MAX_PAGE:
        raise unprocessable(
            "query parameter page is out of range",
            [{"field": "page", "message": f"must be at most {MAX_PAGE}"}],
        )
    return Page(max(page, 1), min(max(page_size, 1), MAX_PAGE_SIZE))


def _query_int(name: str, default: int) -> int:
    text = request.args.get(name)
    if text is None or text == "":
        return default
    try:
        return int(text)
    except ValueError:
        raise unprocessable(
            f"query parameter {name} must be an integer",
            [{"field": name, "message": f"{text!r} is not an integer"}],
        ) from None
