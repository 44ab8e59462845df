"""A real HTTP webhook receiver for tests: records each POST and answers the next queued status."""

from __future__ import annotations

from collections import deque

import attrs
import h11
import trio


@attrs.frozen
class Received:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes


@attrs.define
class Receiver:
    """``url`` takes POSTs; ``statuses`` are answered in order (204 once they run out)."""

    url: str = ""
    statuses: deque[int] = attrs.field(factory=deque)
    received: list[Received] = attrs.field(factory=list)
    arrived: trio.Event = attrs.field(factory=trio.Event)
    scope: trio.CancelScope = attrs.field(factory=trio.CancelScope)

    def close(self) -> None:
        """Stop listening (a nursery that outlives the test need not wait for it)."""
        self.scope.cancel()

    async def wait_for(self, count: int, within: float = 10.0) -> list[Received]:
        with trio.fail_after(within):
            while len(self.received) < count:
                self.arrived = trio.Event()
                await self.arrived.wait()
        return self.received

    async def _serve(self, stream: trio.SocketStream) -> None:
        conn = h11.Connection(h11.SERVER)
        request: h11.Request | None = None
        body = b""
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                conn.receive_data(await stream.receive_some(65536))
                continue
            if isinstance(event, h11.Request):
                request = event
            elif isinstance(event, h11.Data):
                body += event.data
            elif isinstance(event, h11.EndOfMessage):
                assert request is not None
                headers = {k.decode().lower(): v.decode() for k, v in request.headers}
                self.received.append(
                    Received(request.method.decode(), request.target.decode(), headers, body)
                )
                self.arrived.set()
                status = self.statuses.popleft() if self.statuses else 204
                await stream.send_all(conn.send(h11.Response(status_code=status, headers=[])))
                await stream.send_all(conn.send(h11.EndOfMessage()))
                await stream.aclose()
                return
            else:
                await stream.aclose()
                return


async def start_receiver(nursery: trio.Nursery, path: str = "/hooks/render") -> Receiver:
    receiver = Receiver()

    async def serve(*, task_status: trio.TaskStatus[list[trio.SocketListener]]) -> None:
        with receiver.scope:
            await trio.serve_tcp(receiver._serve, 0, host="127.0.0.1", task_status=task_status)

    listeners = await nursery.start(serve)
    port = listeners[0].socket.getsockname()[1]
    receiver.url = f"http://127.0.0.1:{port}{path}"
    return receiver
