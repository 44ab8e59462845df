"""Keep Hypercorn's end-of-response bookkeeping out of reach of Quart-Trio's cancellation.

When a response ends before its request body was read (a 401, 404, 405, 413 or any handler
that ignores the body, and the body arrives after the answer), Hypercorn cannot reuse the
HTTP/1.1 connection and closes it, from inside the application's last ``send``. That ``send``
also delivers ``http.disconnect`` to Quart-Trio, which at once cancels the nursery the ``send``
runs in: the close is cancelled half-way, the socket stays open, and the next request the
client sends on that kept-alive connection waits forever (issue 10 item 11: the schemathesis
timeouts, ~4-10 a run, each after an unsupported-method or body-less probe).

Shielding the ``send`` lets Hypercorn finish: the connection is closed and the client opens a
new one. Hypercorn already shields the socket write itself, so no new wait is introduced.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import trio
from hypercorn.typing import ASGIReceiveCallable, ASGISendCallable, ASGISendEvent, Scope

__all__ = ["guard_connection_close"]

AsgiApp = Callable[[Scope, ASGIReceiveCallable, ASGISendCallable], Awaitable[None]]


def guard_connection_close(app: AsgiApp) -> AsgiApp:
    async def guarded(scope: Scope, receive: ASGIReceiveCallable, send: ASGISendCallable) -> None:
        if scope["type"] != "http":
            await app(scope, receive, send)
            return

        async def shielded_send(message: ASGISendEvent) -> None:
            with trio.CancelScope(shield=True):
                await send(message)

        await app(scope, receive, shielded_send)

    return guarded
