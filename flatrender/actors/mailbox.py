"""Request/reply over trio memory channels: a message carries a one-shot reply slot.

The caller owns the slot and waits with a timeout; the actor answers with :func:`answer` or, when
handling failed, :func:`fail` (which closes the slot so the caller learns at once instead of
waiting out its timeout).

One message's data can fail its handling without anything being wrong with the actor: the
database refuses a value (:class:`DataRefused`: NUL in text, a number out of range). Such an
error is one of :data:`MESSAGE_ERRORS`: every actor's loop answers it to the message's sender,
who raises it (a 4xx at the HTTP edge), and goes on to its next message. That is safe because
actors commit before they change their state: a refused commit leaves the state as it was. A
message without a reply has nobody to tell: refused, it crashes the actor as any error does.
Anything else a handler raises is a bug and crashes the actor, for its supervisor to restart.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable
from typing import Any

import trio

from flatrender.persistence.db import DataRefused

log = logging.getLogger("flatrender.actors")


class ActorUnavailable(Exception):
    """The actor did not answer: it is restarting, stopped, or overloaded."""


# Errors that fail one message, not the actor handling it (see the module docstring).
MESSAGE_ERRORS: tuple[type[Exception], ...] = (DataRefused,)


_CLOSED: Any = object()  # the slot was closed without an answer: the actor failed


class Reply:
    """A one-shot reply slot, the cheap stand-in for a one-item memory channel per call.

    It keeps that channel's send side: ``send_nowait`` delivers the one answer (WouldBlock for a
    second one, BrokenResourceError when the caller stopped waiting, ClosedResourceError after
    ``close``), and ``close`` without an answer tells the waiting caller the actor failed.
    """

    __slots__ = ("_done", "_value", "_task", "_closed", "_abandoned")

    def __init__(self) -> None:
        self._done = False  # answered, or closed unanswered (then _value is _CLOSED)
        self._value: Any = None
        self._task: trio.lowlevel.Task | None = None
        self._closed = False
        self._abandoned = False

    def send_nowait(self, value: Any) -> None:
        if self._closed:
            raise trio.ClosedResourceError
        if self._abandoned:
            raise trio.BrokenResourceError
        if self._done:
            raise trio.WouldBlock
        self._deliver(value)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if not self._done and not self._abandoned:
            self._deliver(_CLOSED)

    def _deliver(self, value: Any) -> None:
        self._done = True
        self._value = value
        task, self._task = self._task, None
        if task is not None:
            trio.lowlevel.reschedule(task)

    async def _receive(self) -> Any:
        """The answer (or EndOfChannel); a checkpoint, like a channel's ``receive``."""
        if self._done:
            await trio.lowlevel.checkpoint_if_cancelled()
            await trio.lowlevel.cancel_shielded_checkpoint()
        else:
            self._task = trio.lowlevel.current_task()

            def abort(_: Any) -> trio.lowlevel.Abort:
                self._task = None
                self._abandoned = True
                return trio.lowlevel.Abort.SUCCEEDED

            await trio.lowlevel.wait_task_rescheduled(abort)
        if self._value is _CLOSED:
            raise trio.EndOfChannel
        return self._value

    def _abandon(self) -> None:
        self._abandoned = True


async def call(
    inbox: trio.MemorySendChannel[Any], make: Callable[[Reply], Any], within_sec: float = 5.0
) -> Any:
    """Send ``make(reply)`` to ``inbox`` and wait for the answer."""
    reply = Reply()
    try:
        with trio.CancelScope(deadline=trio.current_time() + within_sec) as scope:
            message = make(reply)
            # A free inbox slot takes the message without a schedule point of its own: the wait
            # for the answer below is the call's checkpoint. A cancelled caller still sends
            # nothing, as with a plain ``await inbox.send``.
            await trio.lowlevel.checkpoint_if_cancelled()
            try:
                inbox.send_nowait(message)
            except trio.WouldBlock:
                await inbox.send(message)
            result = await reply._receive()
    except (trio.EndOfChannel, trio.BrokenResourceError, trio.ClosedResourceError):
        raise ActorUnavailable("the actor did not answer") from None
    finally:
        reply._abandon()  # an answer that comes later is dropped, as on a closed channel
    if scope.cancelled_caught:
        raise ActorUnavailable("the actor did not answer")
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


def refuse(who: str, message: object, reply: Reply | None, error: Exception) -> None:
    """Answer a message that failed with one of :data:`MESSAGE_ERRORS` (``who`` handled it):
    its sender raises ``error``. A message nobody waits for (a background result) has nobody
    to tell: ``error`` is raised again, and the actor crashes for its supervisor to restart it,
    so that what the message reported is not lost silently (an actor whose restart would meet
    the same data again handles that before, as the JobActor does)."""
    name = type(message).__name__
    if reply is None:
        log.error("%s: %s refused, nobody to tell: %s", who, name, error)
        raise error
    log.warning("%s: %s refused: %s", who, name, error)
    answer(reply, error)
