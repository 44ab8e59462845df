"""One-for-one supervision of trio tasks, with the restart policy as data.

A `Supervisor` owns one nursery and, inside it, one supervising task per child. A child is
described by a `ChildSpec`: its factory is started with ``nursery.start``, so the child is
reachable only once it called ``task_status.started(handle)``. When a child ends, its `Restart`
kind decides whether it is started again from the factory (which rebuilds the child's state from
persistence: that is the child's concern, not the supervisor's). Restarts are paced by an
exponential backoff and bounded per child by `RestartPolicy`; past the bound the supervisor stops
all its children and raises `SupervisorEscalation` out of `Supervisor.run`, to whoever owns it.
"""

from __future__ import annotations

import enum
import logging
from collections import deque
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import attrs
import trio

logger = logging.getLogger("flatrender.supervisor")


class Restart(enum.Enum):
    """When an ended child is started again."""

    PERMANENT = "permanent"  # always, whether it returned or raised
    TRANSIENT = "transient"  # only when it raised; a normal return ends it
    TEMPORARY = "temporary"  # never


class ChildState(enum.Enum):
    STARTING = "starting"  # factory called, task_status.started() not yet
    RUNNING = "running"
    BACKOFF = "backoff"  # ended, waiting to be restarted
    STOPPING = "stopping"  # stop_child() cancelled it


@attrs.frozen
class ChildSpec:
    """What to run and when to restart it.

    `factory` is called as ``factory(task_status=...)`` and must call
    ``task_status.started(handle)`` once it is ready to receive messages; `handle` (a memory
    channel send end, say) is what callers use to reach it. Each incarnation gets a fresh call.
    `on_restart(id, handle)` is called with the handle of every restarted incarnation, so that
    whoever routes to this child can switch to it; an exception from it counts as a crash.
    """

    id: str
    factory: Callable[..., Awaitable[None]]
    restart: Restart = Restart.PERMANENT
    # Handles are Any, as nursery.start's result is: each child publishes a type of its own.
    on_restart: Callable[[str, Any], None] | None = None


@attrs.frozen
class RestartPolicy:
    """Restart intensity and pacing, counted per child.

    More than `max_restarts` restarts of one child within `window_sec` escalate. Consecutive
    restarts wait `backoff_initial_sec`, doubling up to `backoff_max_sec`; the backoff starts over
    once an incarnation has stayed up longer than `window_sec`.
    """

    max_restarts: int = 5
    window_sec: float = 10.0
    backoff_initial_sec: float = 0.1
    backoff_max_sec: float = 5.0

    def backoff(self, consecutive: int) -> float:
        # The exponent is capped so that a child restarted forever cannot overflow the float.
        return min(self.backoff_initial_sec * 2.0 ** min(consecutive, 64), self.backoff_max_sec)


class SupervisorEscalation(Exception):
    """A child exceeded its restart intensity; the supervisor gave up on all its children.

    `last_exception` is the child's last crash, or None when a PERMANENT child kept returning.
    """

    def __init__(self, child_id: str, last_exception: Exception | None) -> None:
        super().__init__(f"child {child_id!r} exceeded its restart intensity: {last_exception!r}")
        self.child_id = child_id
        self.last_exception = last_exception


class ChildUnavailable(LookupError):
    """The child is supervised but between incarnations (starting or backing off)."""


@attrs.frozen
class ChildStatistics:
    state: ChildState
    restarts: int  # since start_child()
    # Messages waiting in its inbox, when its handle is a memory channel (else 0).
    queued: int = 0


@attrs.frozen
class SupervisorStatistics:
    children: Mapping[str, ChildStatistics]


@attrs.define(eq=False)
class _Child:
    spec: ChildSpec
    cancel_scope: trio.CancelScope = attrs.Factory(trio.CancelScope)
    done: trio.Event = attrs.Factory(trio.Event)
    state: ChildState = ChildState.STARTING
    handle: Any = None
    started_at: float = 0.0
    restarts: int = 0
    consecutive: int = 0  # restarts since an incarnation last outlived the window
    recent: deque[float] = attrs.Factory(deque)  # restart times within the window

    @property
    def current_state(self) -> ChildState:
        # Only stop_child() cancels this scope.
        return ChildState.STOPPING if self.cancel_scope.cancel_called else self.state


def _queued(handle: Any) -> int:
    if isinstance(handle, trio.MemorySendChannel):
        return int(handle.statistics().current_buffer_used)
    return 0


def _unwrap(exc: Exception) -> Exception:
    """The leaf under nested one-member groups; a group of several crashes stays a group."""
    while isinstance(exc, ExceptionGroup) and len(exc.exceptions) == 1:
        exc = exc.exceptions[0]
    return exc


class Supervisor:
    """One-for-one supervisor: a crashed child is restarted alone, its siblings are untouched.

    Children live only while `run` runs; cancelling `run` cancels every child, and a child's
    `trio.Cancelled` is never taken for a crash. Crashes are exceptions (`Exception`, possibly in
    an exception group); anything else (KeyboardInterrupt, ...) propagates out of `run`.
    """

    def __init__(self, policy: RestartPolicy | None = None, *, name: str = "supervisor") -> None:
        self.policy = policy if policy is not None else RestartPolicy()
        self.name = name
        self._nursery: trio.Nursery | None = None
        self._children: dict[str, _Child] = {}
        self._escalation: SupervisorEscalation | None = None

    async def run(
        self, *, task_status: trio.TaskStatus[Supervisor] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Supervise until cancelled; ``await nursery.start(sup.run)`` returns `self` once ready.

        Raises `SupervisorEscalation` (after all children were cancelled and have ended) when a
        child exceeds its restart intensity. Never returns normally.
        """
        if self._nursery is not None:
            raise RuntimeError(f"{self.name} is already running")
        self._escalation = None
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                task_status.started(self)
                await trio.sleep_forever()
        finally:
            self._nursery = None
        # Only an escalation cancels the nursery from inside; any other cancellation raised above.
        assert self._escalation is not None
        raise self._escalation from self._escalation.last_exception

    async def start_child(self, spec: ChildSpec) -> Any:
        """Start a child under this supervisor and return the handle it published.

        Raises what the factory raised if this first start fails (the child is then not
        supervised), ValueError if `spec.id` is already supervised, RuntimeError if the
        supervisor is not running. Cancelling the caller before the child is ready cancels it.
        """
        if self._nursery is None:
            raise RuntimeError(f"{self.name} is not running")
        if spec.id in self._children:
            raise ValueError(f"child {spec.id!r} is already supervised by {self.name}")
        child = _Child(spec)
        self._children[spec.id] = child
        return await self._nursery.start(self._supervise, child, name=f"{self.name}/{spec.id}")

    async def stop_child(self, child_id: str) -> None:
        """Cancel a child without restarting it; returns once it has ended. KeyError if unknown."""
        child = self._children[child_id]
        child.cancel_scope.cancel()
        await child.done.wait()

    def child_count(self) -> int:
        return len(self._children)

    def has_child(self, child_id: str) -> bool:
        """O(1): is ``child_id`` supervised (in any state)? Hot paths ask this per request."""
        return child_id in self._children

    def handle(self, child_id: str) -> Any:
        """The handle of the child's running incarnation.

        Raises KeyError for an unknown (or ended) child, `ChildUnavailable` while it restarts.
        """
        child = self._children[child_id]
        if child.current_state is not ChildState.RUNNING:
            raise ChildUnavailable(f"child {child_id!r} is {child.current_state.value}")
        return child.handle

    def statistics(self) -> SupervisorStatistics:
        return SupervisorStatistics(
            children={
                child_id: ChildStatistics(
                    state=child.current_state, restarts=child.restarts, queued=_queued(child.handle)
                )
                for child_id, child in self._children.items()
            }
        )

    async def _supervise(self, child: _Child, *, task_status: trio.TaskStatus[Any]) -> None:
        spec = child.spec
        first = True
        try:
            with child.cancel_scope:
                while True:
                    crash: Exception | None = None
                    child.state = ChildState.STARTING
                    try:
                        async with trio.open_nursery() as nursery:
                            handle = await nursery.start(spec.factory, name=spec.id)
                            child.handle, child.state = handle, ChildState.RUNNING
                            child.started_at = trio.current_time()
                            if first:
                                first = False
                                task_status.started(handle)
                            elif spec.on_restart is not None:
                                spec.on_restart(spec.id, handle)
                    except Exception as exc:
                        crash = _unwrap(exc)
                    if child.cancel_scope.cancel_called or (first and crash is not None):
                        # A stopped child stays ended; a failed first start is for the caller
                        # of start_child(). Raised outside the except: keeps its own traceback.
                        if crash is not None:
                            raise crash
                        return
                    if not await self._before_restart(child, crash):
                        return
        except Exception as exc:
            if first or not child.cancel_scope.cancel_called:
                raise
            # One child's error on its way out must not take its siblings down with it.
            logger.error(
                "%s: child %s raised while being stopped",
                self.name,
                spec.id,
                exc_info=_unwrap(exc),
                extra={"supervisor": self.name, "child_id": spec.id},
            )
        finally:
            if self._children.get(spec.id) is child:
                del self._children[spec.id]
            child.done.set()

    async def _before_restart(self, child: _Child, crash: Exception | None) -> bool:
        """Log how the child ended, then wait out its backoff; False when it is not restarted."""
        spec, policy = child.spec, self.policy
        extra = {"supervisor": self.name, "child_id": spec.id}
        if crash is not None:
            logger.error(
                "%s: child %s (%s) crashed",
                self.name,
                spec.id,
                spec.restart.value,
                exc_info=crash,
                extra=extra,
            )
        else:
            logger.info(
                "%s: child %s (%s) returned", self.name, spec.id, spec.restart.value, extra=extra
            )
        if not (
            spec.restart is Restart.PERMANENT
            or (spec.restart is Restart.TRANSIENT and crash is not None)
        ):
            return False

        now = trio.current_time()
        if child.state is ChildState.RUNNING and now - child.started_at > policy.window_sec:
            child.consecutive = 0
        while child.recent and child.recent[0] <= now - policy.window_sec:
            child.recent.popleft()
        if len(child.recent) >= policy.max_restarts:
            logger.critical(
                "%s: child %s restarted %d times within %.1fs; escalating",
                self.name,
                spec.id,
                len(child.recent),
                policy.window_sec,
                extra=extra,
            )
            if self._escalation is None:
                self._escalation = SupervisorEscalation(spec.id, crash)
            assert self._nursery is not None
            self._nursery.cancel_scope.cancel()
            return False

        child.recent.append(now)
        delay = policy.backoff(child.consecutive)
        child.consecutive += 1
        child.restarts += 1
        child.state, child.handle = ChildState.BACKOFF, None
        logger.info(
            "%s: restarting child %s in %.2fs (restart %d)",
            self.name,
            spec.id,
            delay,
            child.restarts,
            extra=extra,
        )
        await trio.sleep(delay)
        return True
