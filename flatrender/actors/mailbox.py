"""Request/reply over trio memory channels: a message carries a one-shot reply channel.

The caller owns the receive end and waits with a timeout; the actor answers with
:func:`answer` or, when handling failed, :func:`fail` (which closes the reply channel so the caller
learns at once instead of waiting out its timeout).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any, TypeVar

import trio

T = TypeVar("T")

Reply = trio.MemorySendChannel[Any]


class ActorUnavailable(Exception):
    """The actor did not answer: it is restarting, stopped, or overloaded."""


async def call(
    inbox: trio.MemorySendChannel[Any], make: Callable[[Reply], Any], within_sec: float = 5.0
) -> Any:
    """Send ``make(reply)`` to ``inbox`` and wait for the answer."""
    reply_send, reply_recv = trio.open_memory_channel[Any](1)
    with reply_recv:
        try:
            with trio.fail_after(within_sec):
                await inbox.send(make(reply_send))
                result = await reply_recv.receive()
        except (
            trio.TooSlowError,
            trio.EndOfChannel,
            trio.BrokenResourceError,
            trio.ClosedResourceError,
        ):
            raise ActorUnavailable("the actor did not answer") from None
    if isinstance(result, BaseException):
        raise result
    return result


def answer(reply: Reply, value: Any) -> None:
    """Deliver an answer (or an exception the caller should raise); never blocks."""
    # The caller may have given up waiting; the state change stands regardless.
    with contextlib.suppress(trio.BrokenResourceError, trio.WouldBlock, trio.ClosedResourceError):
        reply.send_nowait(value)
    reply.close()


def fail(reply: Reply) -> None:
    reply.close()
