"""One-for-one supervisor: restart kinds, backoff, restart intensity, stop and cancellation.

Every test runs on trio's autojumping mock clock: backoffs and `trio.sleep(60)` ("give any
restart time to happen") cost no real time, and times are asserted exactly. pytest-trio takes the
clock only from a test's own arguments (not from `usefixtures`), hence `autojump_clock` everywhere.
"""

from __future__ import annotations

import enum
import logging
import math
from typing import Any

import attrs
import pytest
import trio
import trio.testing

from flatrender.actors.supervisor import (
    ChildSpec,
    ChildState,
    ChildStatistics,
    ChildUnavailable,
    Restart,
    RestartPolicy,
    Supervisor,
    SupervisorEscalation,
)


class Order(enum.Enum):
    CRASH = enum.auto()
    RETURN = enum.auto()


class Boom(Exception):
    pass


@attrs.define
class FakeChild:
    """A child factory; each incarnation publishes a fresh send channel and obeys its orders.

    Incarnations after the first `healthy_starts` fail before calling `task_status.started()`.
    """

    healthy_starts: float = math.inf
    starts: list[float] = attrs.Factory(list)
    cancelled: int = 0

    async def __call__(
        self, *, task_status: trio.TaskStatus[trio.MemorySendChannel[Order]]
    ) -> None:
        self.starts.append(trio.current_time())
        if len(self.starts) > self.healthy_starts:
            raise Boom(f"startup {len(self.starts)}")
        send, receive = trio.open_memory_channel[Order](1)
        task_status.started(send)
        try:
            async with receive:
                order = await receive.receive()
        except trio.Cancelled:
            self.cancelled += 1
            raise
        if order is Order.CRASH:
            raise Boom(f"incarnation {len(self.starts)}")


@attrs.define
class RestartLog:
    """An `on_restart` hook that queues (child id, new handle) for the test to await."""

    send: trio.MemorySendChannel[tuple[str, Any]]
    receive: trio.MemoryReceiveChannel[tuple[str, Any]]

    def __call__(self, child_id: str, handle: Any) -> None:
        self.send.send_nowait((child_id, handle))

    async def next_handle(self) -> Any:
        _, handle = await self.receive.receive()
        return handle


@pytest.fixture
def restarts() -> RestartLog:
    return RestartLog(*trio.open_memory_channel[tuple[str, Any]](math.inf))


@pytest.fixture
async def supervisor(nursery: trio.Nursery) -> Supervisor:
    sup: Supervisor = await nursery.start(Supervisor().run)
    return sup


def gaps(times: list[float]) -> list[float]:
    return [later - earlier for earlier, later in zip(times, times[1:], strict=False)]


def supervisor_records(caplog: pytest.LogCaptureFixture, level: int) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == "flatrender.supervisor" and r.levelno >= level]


async def test_permanent_child_is_restarted_after_crash_with_a_fresh_handle(
    autojump_clock: trio.testing.MockClock,
    supervisor: Supervisor,
    restarts: RestartLog,
    caplog: pytest.LogCaptureFixture,
) -> None:
    child = FakeChild()
    first = await supervisor.start_child(ChildSpec("node-1", child, on_restart=restarts))

    await first.send(Order.CRASH)
    child_id, second = await restarts.receive.receive()

    assert child_id == "node-1"
    assert second is not first
    assert supervisor.handle("node-1") is second
    with pytest.raises(trio.BrokenResourceError):
        first.send_nowait(Order.RETURN)
    assert supervisor.statistics().children == {
        "node-1": ChildStatistics(state=ChildState.RUNNING, restarts=1)
    }
    [crash] = supervisor_records(caplog, logging.ERROR)
    assert crash.child_id == "node-1"  # type: ignore[attr-defined]
    assert crash.exc_info is not None
    assert isinstance(crash.exc_info[1], Boom)


async def test_permanent_child_is_restarted_after_normal_return(
    autojump_clock: trio.testing.MockClock, supervisor: Supervisor, restarts: RestartLog
) -> None:
    child = FakeChild()
    handle = await supervisor.start_child(ChildSpec("hub", child, on_restart=restarts))

    await handle.send(Order.RETURN)
    await restarts.next_handle()

    assert len(child.starts) == 2


async def test_backoff_doubles_between_consecutive_crashes(
    autojump_clock: trio.testing.MockClock, supervisor: Supervisor, restarts: RestartLog
) -> None:
    child = FakeChild()
    handle = await supervisor.start_child(ChildSpec("node-1", child, on_restart=restarts))

    for _ in range(4):
        await handle.send(Order.CRASH)
        handle = await restarts.next_handle()

    assert gaps(child.starts) == pytest.approx([0.1, 0.2, 0.4, 0.8])


async def test_backoff_is_capped_at_backoff_max(
    autojump_clock: trio.testing.MockClock, nursery: trio.Nursery, restarts: RestartLog
) -> None:
    policy = RestartPolicy(max_restarts=10, backoff_initial_sec=0.1, backoff_max_sec=0.5)
    supervisor: Supervisor = await nursery.start(Supervisor(policy).run)
    child = FakeChild()
    handle = await supervisor.start_child(ChildSpec("node-1", child, on_restart=restarts))

    for _ in range(5):
        await handle.send(Order.CRASH)
        handle = await restarts.next_handle()

    assert gaps(child.starts) == pytest.approx([0.1, 0.2, 0.4, 0.5, 0.5])


async def test_backoff_resets_after_child_stays_up_longer_than_window(
    autojump_clock: trio.testing.MockClock, supervisor: Supervisor, restarts: RestartLog
) -> None:
    child = FakeChild()
    handle = await supervisor.start_child(ChildSpec("node-1", child, on_restart=restarts))
    await handle.send(Order.CRASH)
    handle = await restarts.next_handle()

    await trio.sleep(supervisor.policy.window_sec + 1)
    await handle.send(Order.CRASH)
    await restarts.next_handle()

    assert gaps(child.starts)[0] == pytest.approx(0.1)
    assert trio.current_time() - child.starts[1] == pytest.approx(
        supervisor.policy.window_sec + 1 + 0.1
    )


async def test_transient_child_that_returns_is_not_restarted(
    autojump_clock: trio.testing.MockClock, supervisor: Supervisor
) -> None:
    child = FakeChild()
    handle = await supervisor.start_child(ChildSpec("job-7", child, restart=Restart.TRANSIENT))

    await handle.send(Order.RETURN)
    await trio.sleep(60)

    assert len(child.starts) == 1
    assert "job-7" not in supervisor.statistics().children
    with pytest.raises(KeyError):
        supervisor.handle("job-7")


async def test_transient_child_is_restarted_after_crash(
    autojump_clock: trio.testing.MockClock, supervisor: Supervisor, restarts: RestartLog
) -> None:
    child = FakeChild()
    spec = ChildSpec("job-7", child, restart=Restart.TRANSIENT, on_restart=restarts)
    handle = await supervisor.start_child(spec)

    await handle.send(Order.CRASH)

    assert await restarts.next_handle() is supervisor.handle("job-7")
    assert len(child.starts) == 2


async def test_temporary_child_is_never_restarted(
    autojump_clock: trio.testing.MockClock, supervisor: Supervisor, caplog: pytest.LogCaptureFixture
) -> None:
    crashing, returning = FakeChild(), FakeChild()
    crash_handle = await supervisor.start_child(
        ChildSpec("merge-1", crashing, restart=Restart.TEMPORARY)
    )
    return_handle = await supervisor.start_child(
        ChildSpec("merge-2", returning, restart=Restart.TEMPORARY)
    )

    await crash_handle.send(Order.CRASH)
    await return_handle.send(Order.RETURN)
    await trio.sleep(60)

    assert (len(crashing.starts), len(returning.starts)) == (1, 1)
    assert supervisor.statistics().children == {}
    [crash] = supervisor_records(caplog, logging.ERROR)
    assert "merge-1" in crash.getMessage()
    assert "temporary" in crash.getMessage()


async def test_handle_is_unavailable_while_child_backs_off(
    autojump_clock: trio.testing.MockClock, supervisor: Supervisor
) -> None:
    handle = await supervisor.start_child(ChildSpec("node-1", FakeChild()))

    await handle.send(Order.CRASH)
    await trio.testing.wait_all_tasks_blocked()

    assert supervisor.statistics().children["node-1"].state is ChildState.BACKOFF
    with pytest.raises(ChildUnavailable):
        supervisor.handle("node-1")


async def test_escalates_when_restarts_exceed_max_within_window(
    autojump_clock: trio.testing.MockClock,
) -> None:
    flaky = FakeChild(healthy_starts=1)  # every restart fails before started()
    sibling = FakeChild()
    supervisor = Supervisor(RestartPolicy(max_restarts=3, window_sec=10.0))

    with pytest.RaisesGroup(SupervisorEscalation) as raised:
        async with trio.open_nursery() as nursery:
            await nursery.start(supervisor.run)
            await supervisor.start_child(ChildSpec("sibling", sibling))
            handle = await supervisor.start_child(ChildSpec("flaky", flaky))
            await handle.send(Order.CRASH)

    [escalation] = raised.value.exceptions
    assert isinstance(escalation, SupervisorEscalation)
    assert escalation.child_id == "flaky"
    assert isinstance(escalation.last_exception, Boom)
    assert str(escalation.last_exception) == "startup 4"
    assert len(flaky.starts) == 4  # the first start and 3 restarts
    assert trio.current_time() == pytest.approx(0.1 + 0.2 + 0.4)
    assert sibling.cancelled == 1
    assert supervisor.statistics().children == {}


async def test_restarts_spaced_wider_than_window_never_escalate(
    autojump_clock: trio.testing.MockClock, nursery: trio.Nursery, restarts: RestartLog
) -> None:
    policy = RestartPolicy(max_restarts=1, window_sec=10.0)
    supervisor: Supervisor = await nursery.start(Supervisor(policy).run)
    handle = await supervisor.start_child(ChildSpec("node-1", FakeChild(), on_restart=restarts))

    for _ in range(6):
        await trio.sleep(policy.window_sec)
        await handle.send(Order.CRASH)
        handle = await restarts.next_handle()

    assert supervisor.statistics().children["node-1"] == ChildStatistics(
        state=ChildState.RUNNING, restarts=6
    )


async def test_crash_inside_child_nursery_is_unwrapped_to_the_leaf_exception(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async def nested_crash(*, task_status: trio.TaskStatus[None]) -> None:
        task_status.started()
        async with trio.open_nursery() as inner:
            inner.start_soon(raise_boom)

    async def raise_boom() -> None:
        raise Boom("deep")

    supervisor = Supervisor(RestartPolicy(max_restarts=0))
    with pytest.RaisesGroup(SupervisorEscalation) as raised:
        async with trio.open_nursery() as nursery:
            await nursery.start(supervisor.run)
            await supervisor.start_child(ChildSpec("nested", nested_crash))

    [escalation] = raised.value.exceptions
    assert isinstance(escalation, SupervisorEscalation)
    assert isinstance(escalation.last_exception, Boom)


async def test_stop_child_cancels_and_removes_it(
    autojump_clock: trio.testing.MockClock, supervisor: Supervisor
) -> None:
    child = FakeChild()
    await supervisor.start_child(ChildSpec("node-1", child))

    await supervisor.stop_child("node-1")
    await trio.sleep(60)

    assert child.cancelled == 1
    assert len(child.starts) == 1
    assert "node-1" not in supervisor.statistics().children
    with pytest.raises(KeyError):
        supervisor.handle("node-1")
    # The id is free again, e.g. for a node that registers anew.
    await supervisor.start_child(ChildSpec("node-1", child))
    assert len(child.starts) == 2


async def test_child_raising_while_stopped_is_logged_and_spares_its_siblings(
    autojump_clock: trio.testing.MockClock,
    supervisor: Supervisor,
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def raises_on_stop(*, task_status: trio.TaskStatus[None]) -> None:
        task_status.started()
        try:
            await trio.sleep_forever()
        except trio.Cancelled:
            raise Boom("on the way out") from None

    sibling = FakeChild()
    await supervisor.start_child(ChildSpec("sibling", sibling))
    await supervisor.start_child(ChildSpec("node-1", raises_on_stop))

    await supervisor.stop_child("node-1")

    assert list(supervisor.statistics().children) == ["sibling"]
    assert sibling.cancelled == 0
    [record] = supervisor_records(caplog, logging.ERROR)
    assert "raised while being stopped" in record.getMessage()


async def test_stop_child_during_backoff_prevents_the_restart(
    autojump_clock: trio.testing.MockClock, supervisor: Supervisor
) -> None:
    child = FakeChild()
    handle = await supervisor.start_child(ChildSpec("node-1", child))
    await handle.send(Order.CRASH)
    await trio.testing.wait_all_tasks_blocked()

    await supervisor.stop_child("node-1")
    await trio.sleep(60)

    assert len(child.starts) == 1
    assert supervisor.statistics().children == {}


async def test_cancelling_the_supervisor_cancels_children_without_logging_crashes(
    autojump_clock: trio.testing.MockClock,
    caplog: pytest.LogCaptureFixture,
) -> None:
    children = [FakeChild(), FakeChild()]
    supervisor = Supervisor()

    with trio.CancelScope() as scope:
        async with trio.open_nursery() as nursery:
            await nursery.start(supervisor.run)
            for number, child in enumerate(children):
                await supervisor.start_child(ChildSpec(f"node-{number}", child))
            scope.cancel()

    assert scope.cancelled_caught
    assert [child.cancelled for child in children] == [1, 1]
    assert [len(child.starts) for child in children] == [1, 1]
    assert supervisor.statistics().children == {}
    assert supervisor_records(caplog, logging.WARNING) == []


async def test_start_child_raises_when_first_start_fails(
    autojump_clock: trio.testing.MockClock, supervisor: Supervisor
) -> None:
    child = FakeChild(healthy_starts=0)

    with pytest.raises(Boom, match="startup 1"):
        await supervisor.start_child(ChildSpec("node-1", child))
    await trio.sleep(60)

    assert len(child.starts) == 1
    assert supervisor.statistics().children == {}


async def test_start_child_rejects_an_id_already_supervised(
    autojump_clock: trio.testing.MockClock, supervisor: Supervisor
) -> None:
    await supervisor.start_child(ChildSpec("node-1", FakeChild()))

    with pytest.raises(ValueError, match="node-1"):
        await supervisor.start_child(ChildSpec("node-1", FakeChild()))
