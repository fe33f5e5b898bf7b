"""A loopback TCP proxy that a test or a benchmark can cut (refuse, blackhole, restore).

Used by the fault-injection tests (a network cut between gateway and Collector) and
the fleet scenarios (a network cut between one agent and the gateway).
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Coroutine
from dataclasses import dataclass
from typing import Any, TypeVar

T = TypeVar("T")


@dataclass(eq=False)
class _Link:
    """One client connection through the proxy and its upstream connection."""

    client: asyncio.StreamWriter
    flowing: asyncio.Event
    upstream: asyncio.StreamWriter | None = None

    def abort(self) -> None:
        for writer in (self.client, self.upstream):
            if writer is not None:
                writer.transport.abort()


class TcpProxy:
    """A loopback TCP proxy to `upstream_port`, on a port of its own, that a test can cut.

    - `refuse()`: every connection is closed and the port refuses new ones (a
      component gone, a host answering with RST);
    - `blackhole()`: connections stay open but nothing is forwarded either way, and
      new ones are accepted and never forwarded (a partition: packets dropped);
    - `move_to(port)`: every connection is closed and new ones go to another
      upstream (a balancer that sends a client to another replica);
    - `restore()`: forwarding again; bytes held during a blackhole are delivered, as
      TCP retransmission would after a partition heals. `restore(strand=True)` leaves
      the connections that lived through the blackhole dead forever (a middlebox that
      lost their state) and forwards only new ones.
    """

    def __init__(self, upstream_port: int, upstream_host: str = "127.0.0.1") -> None:
        self._upstream = (upstream_host, upstream_port)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._server: asyncio.Server | None = None
        self._links: set[_Link] = set()
        self._mode = "forward"
        self.port = 0
        self.connections = 0
        """Connections accepted so far."""

    @property
    def address(self) -> str:
        """host:port to give clients instead of the upstream's."""
        return f"127.0.0.1:{self.port}"

    def start(self) -> TcpProxy:
        """Listen on a free port; forward."""
        self._thread.start()
        self._call(self._listen())
        return self

    def refuse(self) -> None:
        """Close every connection; refuse new ones."""
        self._call(self._refuse())

    def blackhole(self) -> None:
        """Keep connections, forward nothing."""
        self._call(self._set_mode("blackhole"))

    def move_to(self, upstream_port: int, upstream_host: str = "127.0.0.1") -> None:
        """Close every connection; forward new ones to another upstream."""
        self._call(self._move(upstream_host, upstream_port))

    def restore(self, *, strand: bool = False) -> None:
        """Forward again (see the class docstring for `strand`)."""
        self._call(self._restore(strand))

    def close(self) -> None:
        """Close everything and stop the proxy's thread."""
        if self._thread.is_alive():
            self._call(self._shutdown())
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=10)
            self._loop.close()

    def _call(self, coroutine: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result(timeout=10)

    async def _listen(self) -> None:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", self.port)
        self.port = int(self._server.sockets[0].getsockname()[1])

    async def _refuse(self) -> None:
        self._mode = "refuse"
        if self._server is not None:
            self._server.close()
            self._server = None
        for link in list(self._links):
            link.abort()
            link.flowing.set()  # let its tasks see the closed sockets and end
        self._links.clear()

    async def _move(self, host: str, port: int) -> None:
        self._upstream = (host, port)
        for link in list(self._links):
            link.abort()

    async def _shutdown(self) -> None:
        await self._refuse()
        # Connections cancelled here are expected: no "Exception in callback" noise.
        self._loop.set_exception_handler(_quiet_cancellations)
        tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _set_mode(self, mode: str) -> None:
        self._mode = mode
        for link in self._links:
            link.flowing.clear()

    async def _restore(self, strand: bool) -> None:
        self._mode = "forward"
        if self._server is None:
            await self._listen()
        for link in self._links:
            if not strand:
                link.flowing.set()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        link = _Link(writer, asyncio.Event())
        if self._mode == "forward":
            link.flowing.set()
        self._links.add(link)
        try:
            await link.flowing.wait()
            if self._mode == "refuse":
                return
            up_reader, link.upstream = await asyncio.open_connection(*self._upstream)
            pumps = {
                asyncio.ensure_future(self._pump(reader, link.upstream, link)),
                asyncio.ensure_future(self._pump(up_reader, writer, link)),
            }
            _, pending = await asyncio.wait(pumps, return_when=asyncio.FIRST_COMPLETED)
            for task in pending:
                task.cancel()
        except OSError:
            pass
        finally:
            self._links.discard(link)
            link.abort()

    @staticmethod
    async def _pump(src: asyncio.StreamReader, dst: asyncio.StreamWriter, link: _Link) -> None:
        with contextlib.suppress(OSError):
            while True:
                await link.flowing.wait()  # while cut, bytes wait in the kernel's buffers
                data = await src.read(65536)
                if not data:
                    return
                await link.flowing.wait()
                dst.write(data)
                await dst.drain()


def _quiet_cancellations(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
    if not isinstance(context.get("exception"), asyncio.CancelledError):
        loop.default_exception_handler(context)
