"""A TCP proxy for drills: forwards 127.0.0.1:<port> to a target, and can cut it.

`cut()` closes every live connection and then answers each new one by closing it at once
(the client sees "server closed the connection unexpectedly", as when PostgreSQL
restarts); `restore()` forwards again. It runs its own event loop in a daemon thread, so
a test blocked in a synchronous call never stalls it.

A cut drains first, for PostgreSQL's wire protocol (plain, not TLS: `sslmode=disable`):
no client bytes are forwarded any more, and the proxy waits (up to `drain` seconds) for
the answer to every request already sent, recognised by its ReadyForQuery message. So a
COMMIT is either never seen by the server or answered: the cut never lands between the
server committing and the client hearing of it. That instant is real, but nothing can
tell afterwards whether that transaction happened; the drill is about what can be known.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from dataclasses import dataclass, field

# ReadyForQuery: 'Z', length 5, transaction status (idle, in a transaction, failed).
READY_FOR_QUERY = b"Z\x00\x00\x00\x05"
TRANSACTION_STATES = (b"I", b"T", b"E")


@dataclass(eq=False)
class _Link:
    client: asyncio.StreamWriter
    server: asyncio.StreamWriter
    awaiting_answer: bool = False  # client bytes forwarded, ReadyForQuery not seen since
    tasks: list[asyncio.Task] = field(default_factory=list)

    def close(self) -> None:
        for writer in (self.client, self.server):
            writer.close()
        for task in self.tasks:
            task.cancel()


@dataclass
class CutReport:
    closed: int  # live connections closed
    drained: bool  # every request sent before the cut was answered first


class TcpProxy:
    def __init__(self, target_host: str, target_port: int, host: str = "127.0.0.1"):
        self.target = (target_host, target_port)
        self.host = host
        self.port = 0
        self.refused = 0  # connections closed at once while cut
        self._links: set[_Link] = set()
        self._forwarding = asyncio.Event()
        self._down = False
        self._loop = asyncio.new_event_loop()
        self._server: asyncio.Server | None = None
        ready = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(ready,), daemon=True)
        self._thread.start()
        ready.wait(10)
        if not self.port:
            raise RuntimeError("the proxy did not start")

    # --- the test's side (any thread) -------------------------------------------------------

    def cut(self, drain: float = 2.0) -> CutReport:
        """Close every live connection and refuse new ones until `restore()`."""
        return self._call(self._cut(drain))

    def restore(self) -> None:
        self._call(self._restore())

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self._call(self._close())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)

    @property
    def live(self) -> int:
        return len(self._links)

    def _call(self, coroutine):
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result(30)

    # --- the proxy's loop ---------------------------------------------------------------------

    def _run(self, ready: threading.Event) -> None:
        asyncio.set_event_loop(self._loop)

        async def start() -> None:
            self._forwarding.set()
            self._server = await asyncio.start_server(self._accept, self.host, 0)
            self.port = self._server.sockets[0].getsockname()[1]

        self._loop.run_until_complete(start())
        ready.set()
        self._loop.run_forever()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self._down:
            self.refused += 1
            writer.close()
            return
        try:
            server_reader, server_writer = await asyncio.open_connection(*self.target)
        except OSError:
            writer.close()
            return
        if self._down:  # cut while connecting
            server_writer.close()
            writer.close()
            return
        link = _Link(client=writer, server=server_writer)
        self._links.add(link)
        link.tasks = [
            asyncio.create_task(self._upstream(link, reader)),
            asyncio.create_task(self._downstream(link, server_reader)),
        ]

    async def _upstream(self, link: _Link, reader: asyncio.StreamReader) -> None:
        try:
            while chunk := await reader.read(65536):
                await self._forwarding.wait()  # held while a cut drains; then dropped
                if link not in self._links:
                    return
                link.awaiting_answer = True
                link.server.write(chunk)
                await link.server.drain()
        except (OSError, asyncio.IncompleteReadError):
            pass
        finally:
            self._drop(link)

    async def _downstream(self, link: _Link, reader: asyncio.StreamReader) -> None:
        try:
            while chunk := await reader.read(65536):
                if (
                    chunk[-6:-1] == READY_FOR_QUERY and chunk[-1:] in TRANSACTION_STATES
                ):  # the answer is complete
                    link.awaiting_answer = False
                link.client.write(chunk)
                await link.client.drain()
        except (OSError, asyncio.IncompleteReadError):
            pass
        finally:
            self._drop(link)

    def _drop(self, link: _Link) -> None:
        if link in self._links:
            self._links.discard(link)
            link.close()

    async def _cut(self, drain: float) -> CutReport:
        self._down = True
        self._forwarding.clear()  # nothing more reaches the server
        deadline = self._loop.time() + drain
        while any(link.awaiting_answer for link in self._links) and self._loop.time() < deadline:
            await asyncio.sleep(0.002)
        drained = not any(link.awaiting_answer for link in self._links)
        links = list(self._links)
        for link in links:
            self._drop(link)
        self._forwarding.set()  # held chunks wake up and find their link gone
        return CutReport(closed=len(links), drained=drained)

    async def _restore(self) -> None:
        self._down = False

    async def _close(self) -> None:
        for link in list(self._links):
            self._drop(link)
        if self._server is not None:
            self._server.close()
