"""Fault injection for tests: a loopback TCP proxy that stalls or cuts, and a scripted peer.

:class:`FaultyProxy` sits between a client and a real nsqd and can stop forwarding without
closing (a stalled network), cut every connection, or cut one in the middle of a frame.
:class:`ScriptedPeer` is a fake nsqd for what a real one cannot be made to do: send malformed
or oversized frames, unknown frame types, garbage or an HTTP reply. Use real daemons for
everything else. Both listen on 127.0.0.1 only and run on the current asyncio loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import struct
from collections.abc import Awaitable, Callable

__all__ = ["FaultyProxy", "ScriptedPeer", "frame"]


def frame(frame_type: int, data: bytes) -> bytes:
    """An NSQ frame as nsqd writes it."""
    return struct.pack(">ii", len(data) + 4, frame_type) + data


class FaultyProxy:
    """Forwards 127.0.0.1:<port> to ``target`` ("host:port") until told to misbehave."""

    def __init__(self, target: str) -> None:
        host, _, port = target.rpartition(":")
        self.target_host, self.target_port = host, int(port)
        self.port = 0
        self.connections = 0
        self._server: asyncio.Server | None = None
        self._flowing = asyncio.Event()
        self._flowing.set()
        self._pairs: set[tuple[asyncio.StreamWriter, asyncio.StreamWriter]] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._cut_after: int | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    async def start(self) -> FaultyProxy:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
        self.cut()
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.wait(list(self._tasks))

    def stall(self) -> None:
        """Stop forwarding in both directions; sockets stay open."""
        self._flowing.clear()

    def resume(self) -> None:
        self._flowing.set()

    def cut(self) -> None:
        """Close every proxied connection at once."""
        for client, upstream in list(self._pairs):
            for writer in (client, upstream):
                writer.transport.abort()
        self._pairs.clear()

    def cut_mid_frame(self, after: int = 6) -> None:
        """Forward only the first ``after`` bytes of the next chunk from nsqd, then cut."""
        self._cut_after = after

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            up_reader, up_writer = await asyncio.open_connection(self.target_host, self.target_port)
        except OSError:
            writer.transport.abort()
            return
        pair = (writer, up_writer)
        self._pairs.add(pair)
        for source, sink, from_nsqd in ((reader, up_writer, False), (up_reader, writer, True)):
            task = asyncio.get_running_loop().create_task(self._pump(source, sink, from_nsqd))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _pump(
        self, source: asyncio.StreamReader, sink: asyncio.StreamWriter, from_nsqd: bool
    ) -> None:
        with contextlib.suppress(OSError, asyncio.CancelledError):
            while data := await source.read(65536):
                await self._flowing.wait()
                if from_nsqd and self._cut_after is not None:
                    sink.write(data[: self._cut_after])
                    self._cut_after = None
                    await sink.drain()
                    self.cut()
                    return
                sink.write(data)
                await sink.drain()
        sink.transport.abort()


class ScriptedPeer:
    """A fake nsqd that answers the magic and IDENTIFY with ``script(reader, writer)``.

    For malformed or hostile peers only; it does not implement the protocol. ``accepted``
    counts connections, so tests can check that a client reconnects.
    """

    def __init__(
        self,
        script: Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]],
    ) -> None:
        self.script = script
        self.port = 0
        self.accepted = 0
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    async def start(self) -> ScriptedPeer:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.wait(list(self._tasks))
        if self._server is not None:
            await self._server.wait_closed()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.accepted += 1
        task = asyncio.current_task()
        if task is not None:
            self._tasks.add(task)
        try:
            await self.script(reader, writer)
        except (OSError, asyncio.IncompleteReadError, asyncio.CancelledError):
            pass
        finally:
            writer.transport.abort()
            if task is not None:
                self._tasks.discard(task)

    @staticmethod
    async def read_identify(reader: asyncio.StreamReader) -> bytes:
        """Read the magic and the IDENTIFY command; returns the IDENTIFY body."""
        await reader.readexactly(4)
        await reader.readline()
        (size,) = struct.unpack(">I", await reader.readexactly(4))
        return await reader.readexactly(size)
