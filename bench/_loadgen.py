"""A lean HTTP/1.1 load generator for the benchmarks: plain asyncio, raw keep-alive sockets.

Each request is a pre-encoded ``bytes`` object written to one of M persistent connections; the
answer is parsed just enough (status line, ``Content-Length``, body). No HTTP library runs per
request, so the generator costs a few tens of microseconds of CPU per request and leaves the
machine's cores to the daemon under test.

Two ways to drive load:

- :func:`closed_loop`: every connection sends its next request as soon as the previous answer is
  complete (max rate; measures a ceiling).
- :func:`open_loop`: simulated nodes each due at their own time (a heap of due times); a free
  connection takes the next due request. Each answer may set the node's next due time.

Everything is bounded: a phase ends at its deadline; answers still missing ``grace`` seconds later
are abandoned (their connections are closed) and counted as unfinished.
"""

from __future__ import annotations

import asyncio
import heapq
import resource
import time
from collections import Counter, deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

# Errors that are not HTTP answers: the connection broke or the phase ended first.
CONNECTION_ERROR = "connection"
UNFINISHED = "unfinished"


class Http1Connection(asyncio.Protocol):
    """One keep-alive connection; one request in flight at a time."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self._buf = bytearray()
        self._waiter: asyncio.Future[tuple[int, bytes]] | None = None
        self._head_end = -1
        self._need = -1
        self._close_after = False

    # -- asyncio.Protocol --------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._fail(ConnectionError(f"connection lost: {exc}"))

    def data_received(self, data: bytes) -> None:
        self._buf += data
        if self._need < 0:
            end = self._buf.find(b"\r\n\r\n")
            if end < 0:
                return
            head = bytes(self._buf[:end]).lower()
            self._head_end = end + 4
            self._need = self._head_end + _content_length(head)
            self._close_after = b"\r\nconnection: close" in head
        if len(self._buf) < self._need:
            return
        status = int(self._buf[9:12])
        body = bytes(self._buf[self._head_end : self._need])
        del self._buf[: self._need]
        self._need = -1
        waiter, self._waiter = self._waiter, None
        if self._close_after:
            self.close()
        if waiter is not None and not waiter.done():
            waiter.set_result((status, body))

    # -- use ---------------------------------------------------------------------------------

    async def request(self, data: bytes) -> tuple[int, bytes]:
        """Write ``data`` (a whole request) and return ``(status, body)`` of the answer."""
        if self.closed or self.transport is None:
            raise ConnectionError("connection closed")
        waiter: asyncio.Future[tuple[int, bytes]] = asyncio.get_running_loop().create_future()
        self._waiter = waiter
        self.transport.write(data)
        return await waiter

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()
        self._fail(ConnectionError("closed"))

    def _fail(self, exc: Exception) -> None:
        waiter, self._waiter = self._waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_exception(exc)


def _content_length(head: bytes) -> int:
    start = head.find(b"\r\ncontent-length:")
    if start < 0:
        return 0
    start += len(b"\r\ncontent-length:")
    end = head.find(b"\r\n", start)
    return int(head[start : end if end >= 0 else len(head)])


async def connect(host: str, port: int) -> Http1Connection:
    loop = asyncio.get_running_loop()
    _, conn = await loop.create_connection(Http1Connection, host, port)
    return conn


# ------------------------------------------------------------------ statistics


@dataclass
class PhaseResult:
    """What one phase measured; latencies in seconds, rates per second."""

    name: str
    window_sec: float
    ok: int = 0
    statuses: Counter[str] = field(default_factory=Counter)
    latencies: list[float] = field(default_factory=list)  # send -> answer complete, 2xx only
    delays: list[float] = field(default_factory=list)  # due -> answer complete (open loop)
    generator_cpu_sec: float = 0.0
    connections: int = 0
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def errors(self) -> int:
        return sum(self.statuses.values()) - self.ok

    @property
    def rate(self) -> float:
        return self.ok / self.window_sec if self.window_sec > 0 else 0.0

    def latency(self, q: float) -> float:
        return percentile(self.latencies, q)

    def delay(self, q: float) -> float:
        return percentile(self.delays, q)

    def error_summary(self) -> str:
        bad = {k: v for k, v in self.statuses.items() if k != "200"}
        return ", ".join(f"{k}: {v}" for k, v in sorted(bad.items())) or "none"


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[index]


class _Recorder:
    """Counts answers completed inside the measurement window [start, end]."""

    def __init__(self, result: PhaseResult, start: float, end: float) -> None:
        self.result = result
        self.start = start
        self.end = end

    def answered(self, sent: float, done: float, status: int, due: float | None = None) -> None:
        if not self.start <= done <= self.end:
            return
        self.result.statuses[str(status)] += 1
        if 200 <= status < 300:
            self.result.ok += 1
            self.result.latencies.append(done - sent)
            if due is not None:
                self.result.delays.append(done - due)

    def failed(self, kind: str, when: float, count: int = 1) -> None:
        if when >= self.start and count:
            self.result.statuses[kind] += count


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


# ------------------------------------------------------------------ closed loop

# A request source: returns (request bytes, context) or None when there is nothing left;
# the handler gets (context, status, body) of every answer.
Source = Callable[[], tuple[bytes, Any] | None]
Handler = Callable[[Any, int, bytes], None]


async def closed_loop(
    name: str,
    host: str,
    port: int,
    connections: int,
    source: Source,
    *,
    duration: float | None,
    warmup: float = 0.0,
    on_answer: Handler | None = None,
    grace: float = 10.0,
) -> PhaseResult:
    """Each connection sends back to back until ``source`` runs dry or ``duration`` ends.

    With ``duration`` None the phase lasts until ``source`` returns None (a fixed amount of
    work) and the window is the time it took.
    """
    loop = asyncio.get_running_loop()
    began = loop.time()
    stop_at = began + warmup + duration if duration is not None else float("inf")
    result = PhaseResult(name, 0.0, connections=connections)
    recorder = _Recorder(result, began + warmup, stop_at)
    cpu0 = _cpu_seconds()
    conns: list[Http1Connection] = []

    async def worker() -> None:
        conn = await connect(host, port)
        conns.append(conn)
        while loop.time() < stop_at:
            item = source()
            if item is None:
                return
            data, ctx = item
            sent = loop.time()
            try:
                status, body = await conn.request(data)
            except ConnectionError:
                recorder.failed(CONNECTION_ERROR, loop.time())
                if on_answer is not None:
                    on_answer(ctx, 0, b"")
                conn = await connect(host, port)
                conns.append(conn)
                continue
            recorder.answered(sent, loop.time(), status)
            if on_answer is not None:
                on_answer(ctx, status, body)

    tasks = [asyncio.ensure_future(worker()) for _ in range(connections)]
    try:
        stuck = await _finish(tasks, stop_at + grace if duration is not None else None)
        recorder.failed(UNFINISHED, loop.time(), stuck)
    finally:
        ended = min(loop.time(), stop_at)
        for conn in conns:
            conn.close()
    recorder.end = ended
    result.window_sec = ended - (began + warmup)
    result.generator_cpu_sec = _cpu_seconds() - cpu0
    return result


async def _finish(tasks: Sequence[asyncio.Future[None]], deadline: float | None) -> int:
    """Wait for the workers until ``deadline``; cancel the rest and return how many."""
    loop = asyncio.get_running_loop()
    timeout = None if deadline is None else max(0.0, deadline - loop.time())
    done, pending = await asyncio.wait(tasks, timeout=timeout)
    for task in pending:
        task.cancel()
    if pending:
        await asyncio.wait(pending)
    for task in done:
        task.result()  # a bug in a worker must not pass silently
    return len(pending)


# ------------------------------------------------------------------ open loop


@dataclass
class OpenLoopNode:
    """One simulated node's view: what to send, and when it is due next."""

    request: Callable[[], bytes]  # builds the request, signed anew each time
    interval_from_answer: Callable[[int, bytes], float]  # next interval after an answer


async def open_loop(
    name: str,
    host: str,
    port: int,
    connections: int,
    nodes: list[OpenLoopNode],
    first_due: list[float],
    *,
    duration: float,
    warmup: float,
    retry_after: float = 1.0,
    grace: float = 10.0,
) -> PhaseResult:
    """Every node sends when due; ``first_due`` are offsets from now, one per node.

    The next due time is the answer's time plus the interval the answer asked for (what a
    node agent does); after a failure the node retries ``retry_after`` seconds later.
    Latency is send -> answer; delay is due -> answer (includes waiting for a free
    connection, i.e. the generator's own queue when the daemon falls behind).
    """
    loop = asyncio.get_running_loop()
    began = loop.time()
    stop_at = began + warmup + duration
    result = PhaseResult(name, duration, connections=connections)
    recorder = _Recorder(result, began + warmup, stop_at)
    heap: list[tuple[float, int]] = [(began + off, i) for i, off in enumerate(first_due)]
    heapq.heapify(heap)
    ready: deque[tuple[float, int]] = deque()
    wake = asyncio.Event()
    lateness: list[float] = []
    cpu0 = _cpu_seconds()
    conns: list[Http1Connection] = []

    async def dispatcher() -> None:
        while loop.time() < stop_at:
            now = loop.time()
            while heap and heap[0][0] <= now:
                ready.append(heapq.heappop(heap))
            if ready:
                wake.set()
            pause = min(0.01, heap[0][0] - now) if heap else 0.01
            await asyncio.sleep(max(0.0, pause))
        wake.set()

    async def worker() -> None:
        conn = await connect(host, port)
        conns.append(conn)
        while True:
            while not ready:
                if loop.time() >= stop_at:
                    return
                wake.clear()
                await wake.wait()
            if loop.time() >= stop_at:
                return
            due, index = ready.popleft()
            node = nodes[index]
            sent = loop.time()
            if sent >= recorder.start:
                lateness.append(sent - due)
            try:
                status, body = await conn.request(node.request())
            except ConnectionError:
                now = loop.time()
                recorder.failed(CONNECTION_ERROR, now)
                heapq.heappush(heap, (now + retry_after, index))
                conn = await connect(host, port)
                conns.append(conn)
                continue
            done = loop.time()
            recorder.answered(sent, done, status, due)
            ok = 200 <= status < 300
            nxt = node.interval_from_answer(status, body) if ok else retry_after
            heapq.heappush(heap, (done + nxt, index))

    tasks = [asyncio.ensure_future(dispatcher())]
    tasks += [asyncio.ensure_future(worker()) for _ in range(connections)]
    try:
        stuck = await _finish(tasks, stop_at + grace)
        recorder.failed(UNFINISHED, loop.time(), stuck)
    finally:
        for conn in conns:
            conn.close()
    # Whatever was due but never sent in the window is load the generator could not place.
    backlog = len(ready) + sum(1 for due, _ in heap if due <= stop_at)
    result.extra["backlog_at_end"] = backlog
    result.extra["lateness_p99"] = percentile(lateness, 99)
    result.generator_cpu_sec = _cpu_seconds() - cpu0
    return result


def round_robin(count: int, start: int = 0) -> Iterator[int]:
    i = start
    while True:
        yield i % count
        i += 1


def wall_clock() -> float:
    return time.time()
