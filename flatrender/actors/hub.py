"""ProgressHub: live RenderProgress per job, fanned out to WebSocket subscribers (DESIGN §1, §5).

Each live job has a topic. Its job actor publishes after every commit (``publish``, synchronous
and never blocking: the topic is a one-slot mailbox where the latest state wins, which is what
coalescing needs). The hub's task flushes a changed topic at most ``interval`` apart (10 a second
by default): it builds the RenderProgress once (:mod:`flatrender.domain.progress`), serialises it
once, and hands the same text to every subscriber's bounded channel with ``send_nowait``. A
subscriber whose channel is full is dropped and closed ``TOO_SLOW`` (1013): one slow browser never
holds back the job actor, the hub or the other subscribers; it reconnects and resyncs from the
snapshot. A terminal state is flushed as the final message, then its subscribers are closed
``FINISHED`` (1000) and the topic retires; the last finished jobs are remembered so a subscriber
racing the end still gets the final message. ``close_all`` (the daemon drains) closes every
subscriber ``GOING_AWAY`` (1001) and refuses new ones.

An admin topic follows node status changes (``node_changed``, from the node actors): a snapshot
of every node, then batches of the changes (the latest status per node) at most 10 a second.

The hub owns only in-memory state that the job actors publish again: an actor restart re-publishes
its job, and a subscriber's seed (loaded from PostgreSQL) fills a topic nobody published yet.
"""

from __future__ import annotations

import enum
import heapq
import json
import logging
import math
from collections import OrderedDict
from uuid import UUID

import attrs
import trio

from flatrender.domain.progress import (
    FrameRate,
    ProgressInputs,
    RenderProgress,
    build,
    frames_reported,
)

log = logging.getLogger("flatrender.hub")

FLUSH_INTERVAL_SEC = 0.1  # at most 10 messages a second per job
SUBSCRIBER_BUFFER = 32  # messages a subscriber may lag before it is dropped (~3 s at full rate)
NODES = UUID(int=0)  # the admin topic of node status changes, keyed apart from the jobs
FINISHED_KEPT = 1024  # finished jobs whose final message a late subscriber still gets


class CloseReason(enum.Enum):
    """Why the hub closed a subscription, as the WebSocket close code."""

    FINISHED = 1000
    GOING_AWAY = 1001
    TOO_SLOW = 1013


class Subscription:
    """One subscriber's bounded channel of serialised RenderProgress messages.

    Iterate ``messages`` until it ends, then ``reason`` says why (None: the subscriber left).
    """

    __slots__ = ("job_id", "messages", "reason", "_send", "_sent")

    def __init__(self, job_id: UUID, buffer: int) -> None:
        self.job_id = job_id
        self._send, self.messages = trio.open_memory_channel[str](buffer)
        self.reason: CloseReason | None = None
        self._sent = -1  # the revision it was last sent

    def _close(self, reason: CloseReason) -> None:
        if self.reason is None:
            self.reason = reason
        self._send.close()


@attrs.define
class HubStatistics:
    topics: int = 0
    subscribers: int = 0
    published: int = 0  # messages built and serialised (once each, whatever the audience)
    delivered: int = 0  # messages handed to a subscriber
    dropped: int = 0  # subscribers dropped for being too slow


class _Topic:
    __slots__ = ("latest", "built", "text", "rate", "subscribers", "last_flush", "dirty", "owned")

    def __init__(self, latest: ProgressInputs) -> None:
        self.latest = latest
        self.built: tuple[int, RenderProgress] | None = None  # (revision, what was sent)
        self.text = ""
        self.rate = FrameRate()
        self.subscribers: set[Subscription] = set()
        self.last_flush = -math.inf
        self.dirty = False
        self.owned = False  # a job actor publishes here (else a subscriber's seed made it)


class ProgressHub:
    def __init__(
        self, *, interval: float = FLUSH_INTERVAL_SEC, buffer: int = SUBSCRIBER_BUFFER
    ) -> None:
        self.interval = interval
        self.buffer = buffer
        self._topics: dict[UUID, _Topic] = {}
        self._finished: OrderedDict[UUID, tuple[int, RenderProgress, str]] = OrderedDict()
        self._due: list[tuple[float, UUID]] = []  # (flush time, job) of dirty topics
        self._wake = trio.Event()
        self._sleep_until = math.inf
        self._closing = False
        self._stats = HubStatistics()
        # The admin topic: the latest status of every node that changed since the start (it
        # overlays a subscriber's snapshot, which may be older) and the changes not yet sent.
        self._node_status: dict[UUID, str] = {}
        self._node_changes: dict[UUID, str] = {}
        self._node_subs: set[Subscription] = set()
        self._node_last_flush = -math.inf
        self._node_revision = 0

    # ------------------------------------------------------------------ the job actors' side

    def publish(self, inputs: ProgressInputs) -> None:
        """The job changed (called after its commit); never blocks, never fails."""
        job_id = inputs.state.job_id
        topic = self._topics.get(job_id)
        if topic is None:
            done = self._finished.get(job_id)
            if done is not None and done[0] >= inputs.revision:
                return  # a late publish of a job already finished
            topic = self._topics[job_id] = _Topic(inputs)
        elif inputs.revision < topic.latest.revision:
            return  # older than what the topic holds (a subscriber's seed got there first)
        topic.latest = inputs
        topic.owned = True
        if not topic.dirty:
            topic.dirty = True
            due = max(topic.last_flush + self.interval, trio.current_time())
            heapq.heappush(self._due, (due, job_id))
            if due < self._sleep_until:
                self._wake.set()

    def node_changed(self, node_id: UUID, status: str) -> None:
        """A node's status changed (called after its commit); never blocks."""
        self._node_status[node_id] = status
        self._node_changes[node_id] = status
        if len(self._node_changes) == 1:  # the first change since the last flush
            due = max(self._node_last_flush + self.interval, trio.current_time())
            heapq.heappush(self._due, (due, NODES))
            if due < self._sleep_until:
                self._wake.set()

    # ------------------------------------------------------------------ the subscribers' side

    def subscribe_nodes(self, snapshot: list[dict[str, str]]) -> Subscription:
        """The admin topic: first every node (``snapshot`` from PostgreSQL, overlaid with the
        newer statuses the hub has seen), then batches of changes, at most 10 a second."""
        sub = Subscription(NODES, self.buffer)
        if self._closing:
            sub._close(CloseReason.GOING_AWAY)
            return sub
        nodes = [
            {**n, "status": self._node_status.get(UUID(n["id"]), n["status"])} for n in snapshot
        ]
        self._deliver(sub, json.dumps({"type": "snapshot", "nodes": nodes}), self._node_revision)
        self._node_subs.add(sub)
        self._stats.subscribers += 1
        return sub

    def subscribe(
        self,
        job_id: UUID,
        seed: ProgressInputs | None = None,
        seed_rate: FrameRate | None = None,
    ) -> Subscription | None:
        """A subscription whose first message is the job's current RenderProgress.

        ``seed`` (the job as PostgreSQL has it) is used only when no newer state is known;
        without one, None when the hub does not know the job (load it, and ask again).
        """
        sub = Subscription(job_id, self.buffer)
        if self._closing:
            sub._close(CloseReason.GOING_AWAY)
            return sub
        done = self._finished.get(job_id)
        if done is not None:
            self._deliver(sub, done[2], done[0])
            sub._close(CloseReason.FINISHED)
            return sub
        topic = self._topics.get(job_id)
        if seed is not None and (
            topic is None or (not topic.owned and topic.latest.revision < seed.revision)
        ):
            topic = self._seed(seed, seed_rate, topic)
        if topic is None:
            return None
        if topic.built is None or topic.built[0] != topic.latest.revision:
            # The snapshot is the newest state; the others get it at the topic's next flush.
            self._build(topic, trio.current_time())
        assert topic.built is not None
        self._deliver(sub, topic.text, topic.built[0])
        if topic.built[1].terminal:
            sub._close(CloseReason.FINISHED)
            if not topic.owned:
                # No actor will flush it: subscribers a newer seed carried over get the
                # final message and their close now, as a flush would give them.
                self._finish(job_id, topic)
            return sub
        topic.subscribers.add(sub)
        self._stats.subscribers += 1
        return sub

    def _seed(self, seed: ProgressInputs, rate: FrameRate | None, old: _Topic | None) -> _Topic:
        topic = _Topic(seed)
        if rate is not None:
            topic.rate = rate
        if old is not None:
            topic.subscribers = old.subscribers
        self._topics[seed.state.job_id] = topic
        return topic

    def unsubscribe(self, sub: Subscription) -> None:
        if sub in self._node_subs:
            self._node_subs.discard(sub)
            self._stats.subscribers -= 1
        topic = self._topics.get(sub.job_id)
        if topic is not None and sub in topic.subscribers:
            topic.subscribers.discard(sub)
            self._stats.subscribers -= 1
            if not topic.owned and not topic.subscribers:
                del self._topics[sub.job_id]
        sub._send.close()

    def current(self, job_id: UUID) -> RenderProgress | None:
        """What a subscriber would be sent now; None when the hub does not know the job."""
        done = self._finished.get(job_id)
        if done is not None:
            return done[1]
        topic = self._topics.get(job_id)
        if topic is None:
            return None
        if topic.built is None or topic.built[0] != topic.latest.revision:
            now = trio.current_time()
            topic.rate.observe(now, frames_reported(topic.latest.state))
            return build(topic.latest, topic.rate.per_sec(now))
        return topic.built[1]

    def close_all(self) -> None:
        """The daemon drains: every subscriber is closed GOING_AWAY (1001), new ones too."""
        self._closing = True
        for topic in self._topics.values():
            for sub in topic.subscribers:
                sub._close(CloseReason.GOING_AWAY)
            self._stats.subscribers -= len(topic.subscribers)
            topic.subscribers = set()
        for sub in self._node_subs:
            sub._close(CloseReason.GOING_AWAY)
        self._stats.subscribers -= len(self._node_subs)
        self._node_subs = set()

    def statistics(self) -> HubStatistics:
        return attrs.evolve(self._stats, topics=len(self._topics))

    # ------------------------------------------------------------------ the hub's task

    async def run(
        self, *, task_status: trio.TaskStatus[ProgressHub] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Flush changed topics, each at most once per ``interval``; runs until cancelled."""
        task_status.started(self)
        while True:
            now = trio.current_time()
            while self._due and self._due[0][0] <= now:
                _, job_id = heapq.heappop(self._due)
                if job_id == NODES:
                    self._flush_nodes(now)
                    continue
                topic = self._topics.get(job_id)
                if topic is not None and topic.dirty:
                    self._flush(job_id, topic, now)
            self._sleep_until = self._due[0][0] if self._due else math.inf
            self._wake = trio.Event()
            with trio.move_on_at(self._sleep_until):
                await self._wake.wait()

    def _build(self, topic: _Topic, now: float) -> RenderProgress:
        topic.rate.observe(now, frames_reported(topic.latest.state))
        progress = build(topic.latest, topic.rate.per_sec(now))
        topic.built = (topic.latest.revision, progress)
        topic.text = progress.encode()
        self._stats.published += 1
        return progress

    def _flush(self, job_id: UUID, topic: _Topic, now: float) -> None:
        topic.dirty = False
        topic.last_flush = now
        if topic.built is None or topic.built[0] != topic.latest.revision:
            self._build(topic, now)
        assert topic.built is not None
        revision, progress = topic.built
        for sub in list(topic.subscribers):
            if sub._sent != revision:  # a snapshot may have carried it already
                self._deliver(sub, topic.text, revision, topic)
        if progress.terminal:
            self._finish(job_id, topic)

    def _finish(self, job_id: UUID, topic: _Topic) -> None:
        """A terminal topic: its subscribers get the final message (unless they had it) and
        close FINISHED; the topic retires and is remembered for late subscribers."""
        assert topic.built is not None
        revision, progress = topic.built
        for sub in topic.subscribers:
            if sub._sent != revision:
                self._deliver(sub, topic.text, revision)
            sub._close(CloseReason.FINISHED)
        self._stats.subscribers -= len(topic.subscribers)
        topic.subscribers = set()
        del self._topics[job_id]
        self._finished[job_id] = (revision, progress, topic.text)
        if len(self._finished) > FINISHED_KEPT:
            self._finished.popitem(last=False)

    def _flush_nodes(self, now: float) -> None:
        changes, self._node_changes = self._node_changes, {}
        self._node_last_flush = now
        self._node_revision += 1
        if not changes or not self._node_subs:
            return
        nodes = [{"id": str(node), "status": status} for node, status in changes.items()]
        text = json.dumps({"type": "changes", "nodes": nodes})
        self._stats.published += 1
        for sub in list(self._node_subs):
            self._deliver(sub, text, self._node_revision)
            if sub.reason is not None:
                self._node_subs.discard(sub)
                self._stats.subscribers -= 1

    def _deliver(
        self, sub: Subscription, text: str, revision: int, topic: _Topic | None = None
    ) -> None:
        try:
            sub._send.send_nowait(text)
        except trio.WouldBlock:
            sub._close(CloseReason.TOO_SLOW)
            self._stats.dropped += 1
            log.info("job %s: a subscriber too slow to keep up was dropped", sub.job_id)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass  # the subscriber left
        else:
            sub._sent = revision
            self._stats.delivered += 1
            return
        if topic is not None and sub in topic.subscribers:
            topic.subscribers.discard(sub)
            self._stats.subscribers -= 1
