"""ProgressHub: coalescing, fan-out, slow subscribers, the final message, shutdown."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from uuid import uuid4

import attrs
import trio
import trio.testing

from flatrender.actors.hub import CloseReason, ProgressHub, Subscription
from flatrender.domain.job_state import JobState, JobStep, RangeState, RangeStatus
from flatrender.domain.progress import ProgressInputs

NODE = uuid4()


def job(frames_done: int, *, step: JobStep = JobStep.RENDERING) -> JobState:
    return JobState(
        job_id=JOB,
        start_frame=0,
        end_frame=999,
        step=step,
        ranges=(
            RangeState(
                RANGE,
                0,
                999,
                RangeStatus.RENDERING,
                NODE,
                reported_frames=frozenset(range(frames_done)),
            ),
        ),
    )


JOB, RANGE = uuid4(), uuid4()


def inputs(frames_done: int, revision: int, **kw: JobStep) -> ProgressInputs:
    return ProgressInputs(job(frames_done, **kw), revision)


def sub_(hub: ProgressHub, seed: ProgressInputs) -> Subscription:
    sub = hub.subscribe(seed.state.job_id, seed)
    assert sub is not None
    return sub


def drain(sub: Subscription) -> list[dict[str, object]]:
    out = []
    while True:
        try:
            out.append(json.loads(sub.messages.receive_nowait()))
        except (trio.WouldBlock, trio.EndOfChannel):
            return out


async def test_changes_are_coalesced_to_ten_a_second_and_the_latest_wins(
    autojump_clock: trio.testing.MockClock, nursery: trio.Nursery
) -> None:
    hub = await nursery.start(ProgressHub().run)
    sub = sub_(hub, inputs(0, 1))
    assert [m["current_frame"] for m in drain(sub)] == [None]  # the snapshot
    start = trio.current_time()
    received: list[tuple[float, int]] = []
    for frame in range(1, 301):  # 300 changes over 3 s: 100 a second
        hub.publish(inputs(frame, frame + 1))
        await trio.sleep(0.01)
        received += [(trio.current_time() - start, m["current_frame"]) for m in drain(sub)]
    await trio.sleep(0.2)
    received += [(trio.current_time() - start, m["current_frame"]) for m in drain(sub)]
    assert 28 <= len(received) <= 31  # at most 10 a second over ~3 s
    gaps = [b[0] - a[0] for a, b in zip(received, received[1:], strict=False)]
    assert min(gaps) >= 0.09 - 1e-9  # flushed 0.1 s apart, read every 0.01 s
    assert received[-1][1] == 299  # the last change is never lost
    frames = [f for _, f in received]
    assert frames == sorted(frames)
    stats = hub.statistics()
    assert (stats.subscribers, stats.dropped) == (1, 0)
    assert stats.delivered == len(received) + 1


async def test_a_slow_subscriber_is_dropped_while_a_fast_one_gets_everything(
    autojump_clock: trio.testing.MockClock, nursery: trio.Nursery
) -> None:
    hub = await nursery.start(ProgressHub(buffer=4).run)
    slow = sub_(hub, inputs(0, 1))  # never reads
    fast = sub_(hub, inputs(0, 1))
    seen = drain(fast)
    for frame in range(1, 21):
        hub.publish(inputs(frame, frame + 1))
        await trio.sleep(0.1)
        seen += drain(fast)
    assert [m["current_frame"] for m in seen] == [None, *range(0, 20)]
    assert slow.reason is CloseReason.TOO_SLOW
    assert len(drain(slow)) == 4  # what it held when it was dropped; then its channel ended
    stats = hub.statistics()
    assert (stats.subscribers, stats.dropped, stats.published) == (1, 1, 21)  # snapshot + 20
    assert stats.delivered == 21 + 4


async def test_the_final_message_then_close_finished_and_late_subscribers_get_it(
    autojump_clock: trio.testing.MockClock, nursery: trio.Nursery
) -> None:
    hub = await nursery.start(ProgressHub().run)
    sub = sub_(hub, inputs(10, 1))
    hub.publish(inputs(10, 2, step=JobStep.CANCELLED))
    await trio.sleep(0.2)
    messages = [json.loads(m) async for m in sub.messages]  # ends: the hub closed it
    assert [m["step"] for m in messages] == ["Rendering", "Cancelled"]
    assert sub.reason is CloseReason.FINISHED
    assert hub.statistics().subscribers == 0 and hub.statistics().topics == 0
    # A watcher that read the job from the database just before the end still gets the end.
    late = sub_(hub, inputs(10, 1))
    assert [m["step"] for m in drain(late)] == ["Cancelled"]
    assert late.reason is CloseReason.FINISHED
    assert hub.current(JOB) is not None and hub.current(JOB).step == "Cancelled"  # type: ignore[union-attr]
    hub.publish(inputs(10, 2, step=JobStep.CANCELLED))  # a repeat does not revive the topic
    assert hub.statistics().topics == 0


async def test_current_is_the_newest_state_and_a_stale_seed_does_not_win(
    autojump_clock: trio.testing.MockClock, nursery: trio.Nursery
) -> None:
    hub = await nursery.start(ProgressHub().run)
    assert hub.current(JOB) is None
    hub.publish(inputs(50, 9))
    assert hub.current(JOB).current_frame == 49  # type: ignore[union-attr]
    sub = sub_(hub, inputs(5, 3))  # read from PostgreSQL before the last commits
    await trio.sleep(0.2)
    assert [m["current_frame"] for m in drain(sub)] == [49]
    hub.publish(inputs(40, 8))  # out of order: ignored
    assert hub.current(JOB).current_frame == 49  # type: ignore[union-attr]


async def test_close_all_closes_everyone_going_away_and_refuses_newcomers(
    autojump_clock: trio.testing.MockClock, nursery: trio.Nursery
) -> None:
    hub = await nursery.start(ProgressHub().run)
    subs = [sub_(hub, inputs(0, 1)) for _ in range(3)]
    hub.close_all()
    assert all(s.reason is CloseReason.GOING_AWAY for s in subs)
    assert sub_(hub, inputs(0, 1)).reason is CloseReason.GOING_AWAY
    assert hub.statistics().subscribers == 0


async def test_a_subscriber_that_leaves_stops_counting(nursery: trio.Nursery) -> None:
    hub = await nursery.start(ProgressHub().run)
    sub = sub_(hub, inputs(0, 1))
    assert (hub.statistics().subscribers, hub.statistics().topics) == (1, 1)
    hub.unsubscribe(sub)
    # Nobody publishes for this job and nobody listens: the seeded topic goes.
    assert (hub.statistics().subscribers, hub.statistics().topics) == (0, 0)


async def test_publishing_never_waits_even_with_a_thousand_stuck_subscribers(
    nursery: trio.Nursery,
) -> None:
    hub = await nursery.start(ProgressHub(buffer=1, interval=0.0).run)
    subs = [sub_(hub, inputs(0, 1)) for _ in range(1000)]
    for frame in range(1, 4):
        hub.publish(inputs(frame, frame + 1))  # synchronous: cannot block
        await trio.testing.wait_all_tasks_blocked()
    assert all(s.reason is CloseReason.TOO_SLOW for s in subs)
    assert hub.statistics().dropped == 1000
    assert attrs.asdict(hub.statistics())["subscribers"] == 0


async def test_a_newcomer_gets_the_newest_state_once_and_the_others_at_the_next_flush(
    autojump_clock: trio.testing.MockClock, nursery: trio.Nursery
) -> None:
    hub = await nursery.start(ProgressHub().run)
    first = sub_(hub, inputs(0, 1))
    hub.publish(inputs(5, 2))
    await trio.sleep(0.01)  # flushed at once: the topic had not flushed for an interval
    hub.publish(inputs(6, 3))  # now within the interval: pending
    second = sub_(hub, inputs(0, 1))
    assert [m["current_frame"] for m in drain(second)] == [5]
    await trio.sleep(0.2)
    assert [m["current_frame"] for m in drain(first)] == [None, 4, 5]
    assert drain(second) == []  # its snapshot already was revision 3


async def test_node_changes_reach_admins_in_batches_latest_status_per_node(
    autojump_clock: trio.testing.MockClock, nursery: trio.Nursery
) -> None:
    hub = await nursery.start(ProgressHub().run)
    a, b = uuid4(), uuid4()
    hub.node_changed(a, "Busy")  # before anyone listens: overlays a later (older) snapshot
    admin = hub.subscribe_nodes(
        [
            {"id": str(a), "name": "a", "status": "Idle"},
            {"id": str(b), "name": "b", "status": "Idle"},
        ]
    )
    await trio.sleep(0.2)
    snapshot, *repeated = drain(admin)
    # The change pending at subscribe time may come again: the snapshot already said so.
    assert repeated in ([], [{"type": "changes", "nodes": [{"id": str(a), "status": "Busy"}]}])
    assert snapshot == {
        "type": "snapshot",
        "nodes": [
            {"id": str(a), "name": "a", "status": "Busy"},
            {"id": str(b), "name": "b", "status": "Idle"},
        ],
    }
    for status in ("Busy", "Offline", "Idle"):  # one burst: one message, the latest per node
        hub.node_changed(b, status)
    hub.node_changed(a, "Idle")
    await trio.sleep(0.2)
    assert drain(admin) == [
        {
            "type": "changes",
            "nodes": [{"id": str(b), "status": "Idle"}, {"id": str(a), "status": "Idle"}],
        }
    ]
    hub.unsubscribe(admin)
    assert hub.statistics().subscribers == 0


async def test_subscribers_a_finished_seed_carries_over_get_the_final_message_and_close(
    autojump_clock: trio.testing.MockClock, nursery: trio.Nursery
) -> None:
    """No actor publishes (its job ended before the hub heard of it): a second subscriber's
    newer, terminal seed replaces the first one's topic, and the first must not hang."""
    hub = await nursery.start(ProgressHub().run)
    first = sub_(hub, inputs(5, 1))
    second = sub_(hub, inputs(7, 2, step=JobStep.COMPLETED))
    assert [m["step"] for m in drain(second)] == ["Completed"]
    assert second.reason is CloseReason.FINISHED
    with trio.fail_after(1):
        assert [m["step"] async for m in _decoded(first)] == ["Rendering", "Completed"]
    assert first.reason is CloseReason.FINISHED
    stats = hub.statistics()
    assert (stats.topics, stats.subscribers) == (0, 0)
    # A later subscriber gets the final message from memory.
    third = hub.subscribe(JOB)
    assert third is not None and [m["step"] for m in drain(third)] == ["Completed"]


async def _decoded(sub: Subscription) -> AsyncIterator[dict[str, object]]:
    async for text in sub.messages:
        yield json.loads(text)
