"""An asyncio-native network backend for httpcore, and the httpx transport that uses it.

Why: httpcore's pool asks every pooled connection ``has_expired()`` each time a request starts
or ends, and for an idle HTTP/1.1 connection that asks the stream ``get_extra_info
("is_readable")``. The default (anyio) stream answers by building anyio's extra-attributes
dict and calling ``poll()`` on the socket: at 200 jobs at once that was a quarter of the event
loop's CPU (BENCHMARKS.md, issue 12). Here each connection is an ``asyncio.Protocol`` the loop
already reads for: data or an end that arrived while the connection was idle is in its buffer,
so "is readable" is two attribute reads, no syscall. Reads, writes, TLS (``loop.start_tls``,
with SNI) and timeouts raise httpcore's own exceptions, which httpx maps as it always does.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import AsyncIterator, Iterable
from typing import Any

import httpcore
import httpx

# A connection reads ahead at most this much before it stops reading from the socket.
READ_AHEAD_BYTES = 256 * 1024

SocketOption = Any  # httpcore's SOCKET_OPTION tuples


def _expire(waiter: asyncio.Future[None], error: type[Exception]) -> None:
    if not waiter.done():
        waiter.set_exception(error("timed out"))


async def _wait(
    waiter: asyncio.Future[None], seconds: float | None, error: type[Exception]
) -> None:
    """Wait for ``waiter``; past ``seconds`` it fails with ``error`` (a timer, cheaper than an
    ``asyncio.timeout`` scope on every read)."""
    if seconds is None:
        await waiter
        return
    timer = asyncio.get_running_loop().call_later(max(0.0, seconds), _expire, waiter, error)
    try:
        await waiter
    finally:
        timer.cancel()


class _Connection(asyncio.Protocol):
    """One socket's state, fed by the event loop (before and after TLS: the protocol stays)."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.ended = False  # the peer's EOF, or the connection lost
        self.error: Exception | None = None
        self.read_paused = False
        self.write_paused = False
        self._reader: asyncio.Future[None] | None = None
        self._writer: asyncio.Future[None] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        if len(self.buffer) >= READ_AHEAD_BYTES and self.transport and not self.read_paused:
            self.read_paused = True
            self.transport.pause_reading()
        self._wake_reader()

    def eof_received(self) -> bool:
        self.ended = True
        self._wake_reader()
        return False  # the transport closes itself

    def connection_lost(self, exc: Exception | None) -> None:
        self.ended = True
        self.error = exc
        self._wake_reader()
        if self._writer is not None and not self._writer.done():
            self._writer.set_result(None)

    def pause_writing(self) -> None:
        self.write_paused = True

    def resume_writing(self) -> None:
        self.write_paused = False
        if self._writer is not None and not self._writer.done():
            self._writer.set_result(None)

    def _wake_reader(self) -> None:
        if self._reader is not None and not self._reader.done():
            self._reader.set_result(None)

    async def readable(self, seconds: float | None) -> None:
        self._reader = asyncio.get_running_loop().create_future()
        try:
            await _wait(self._reader, seconds, httpcore.ReadTimeout)
        finally:
            self._reader = None

    async def writable(self, seconds: float | None) -> None:
        self._writer = asyncio.get_running_loop().create_future()
        try:
            await _wait(self._writer, seconds, httpcore.WriteTimeout)
        finally:
            self._writer = None


class AsyncioStream(httpcore.AsyncNetworkStream):
    """httpcore's view of one connection (plain TCP, or TLS after ``start_tls``)."""

    def __init__(self, connection: _Connection, transport: asyncio.Transport) -> None:
        self._connection = connection
        self._transport = transport
        connection.transport = transport

    async def read(self, max_bytes: int, timeout: float | None = None) -> bytes:  # noqa: ASYNC109
        connection = self._connection
        while not connection.buffer and not connection.ended:
            await connection.readable(timeout)
        buffer = connection.buffer
        if not buffer:
            if connection.error is not None:
                raise httpcore.ReadError(str(connection.error) or type(connection.error).__name__)
            return b""
        data = bytes(buffer[:max_bytes])
        del buffer[:max_bytes]
        if connection.read_paused and len(buffer) < READ_AHEAD_BYTES // 2:
            connection.read_paused = False
            self._transport.resume_reading()
        return data

    async def write(self, buffer: bytes, timeout: float | None = None) -> None:  # noqa: ASYNC109
        if not buffer:
            return
        connection = self._connection
        if connection.ended or self._transport.is_closing():
            raise httpcore.WriteError("the connection is closed")
        self._transport.write(buffer)
        while connection.write_paused and not connection.ended:
            await connection.writable(timeout)
        if connection.error is not None:
            raise httpcore.WriteError(str(connection.error) or type(connection.error).__name__)

    async def aclose(self) -> None:
        # At once, as httpcore's anyio backend does (no TLS close handshake to wait for):
        # httpcore closes a connection only when it has no more use for it.
        self._transport.abort()

    async def start_tls(
        self,
        ssl_context: ssl.SSLContext,
        server_hostname: str | None = None,
        timeout: float | None = None,  # noqa: ASYNC109 (httpcore's interface)
    ) -> httpcore.AsyncNetworkStream:
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(timeout):
                tls = await loop.start_tls(
                    self._transport, self._connection, ssl_context, server_hostname=server_hostname
                )
        except BaseException as exc:
            self._transport.abort()
            if isinstance(exc, TimeoutError):
                raise httpcore.ConnectTimeout("TLS handshake timed out") from None
            if isinstance(exc, OSError):  # ssl.SSLError is one
                raise httpcore.ConnectError(str(exc)) from None
            raise
        assert tls is not None  # None only for a server-side transport that is closing
        return AsyncioStream(self._connection, tls)

    def get_extra_info(self, info: str) -> Any:
        if info == "is_readable":  # asked of every idle connection on each pool change
            return self._connection.ended or bool(self._connection.buffer)
        name = {"ssl_object": "ssl_object", "client_addr": "sockname",
                "server_addr": "peername", "socket": "socket"}.get(info)  # fmt: skip
        return None if name is None else self._transport.get_extra_info(name)


class AsyncioBackend(httpcore.AsyncNetworkBackend):
    """Opens TCP connections with ``loop.create_connection`` (TCP_NODELAY, as asyncio does)."""

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,  # noqa: ASYNC109 (httpcore's interface)
        local_address: str | None = None,
        socket_options: Iterable[SocketOption] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        loop = asyncio.get_running_loop()
        local = None if local_address is None else (local_address, 0)
        try:
            async with asyncio.timeout(timeout):
                transport, connection = await loop.create_connection(
                    _Connection, host, port, local_addr=local
                )
        except TimeoutError:
            raise httpcore.ConnectTimeout(f"connecting to {host}:{port} timed out") from None
        except OSError as exc:
            raise httpcore.ConnectError(str(exc)) from None
        try:
            for option in socket_options or ():
                transport.get_extra_info("socket").setsockopt(*option)
        except OSError as exc:
            transport.abort()
            raise httpcore.ConnectError(str(exc)) from None
        return AsyncioStream(connection, transport)

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)


class AsyncioTransport(httpx.AsyncHTTPTransport):
    """httpx's own transport (request and exception mapping, response streams) over a pool
    on ``AsyncioBackend``. httpx has no parameter for a network backend, so the pool it built
    is replaced by an identical one that has it; ``verify`` as for httpx."""

    def __init__(
        self, *, limits: httpx.Limits, verify: ssl.SSLContext | bool = True, retries: int = 0
    ) -> None:
        context = httpx.create_ssl_context(verify=verify)
        super().__init__(verify=context, limits=limits, retries=retries)
        self._pool = httpcore.AsyncConnectionPool(
            ssl_context=context,
            max_connections=limits.max_connections,
            max_keepalive_connections=limits.max_keepalive_connections,
            keepalive_expiry=limits.keepalive_expiry,
            retries=retries,
            network_backend=AsyncioBackend(),
        )


class _Released(httpx.AsyncByteStream):
    """A response body that tells its shard when it is closed (read to the end or not)."""

    def __init__(self, inner: httpx.AsyncByteStream, busy: list[int], shard: int) -> None:
        self._inner, self._busy, self._shard = inner, busy, shard
        self._open = True

    async def __aiter__(self) -> AsyncIterator[bytes]:
        async for chunk in self._inner:
            yield chunk

    async def aclose(self) -> None:
        if self._open:
            self._open = False
            self._busy[self._shard] -= 1
        await self._inner.aclose()


class ShardedTransport(httpx.AsyncBaseTransport):
    """``shards`` small pools in place of one of ``limits.max_connections``.

    httpcore's pool scans all its connections on every request's start and end, and for each
    idle one counts them all again: O(n²) in its size per call. Split in 8, each call pays for
    a pool of 8. A request goes to the pool with the fewest requests in flight (ties: the
    first, so light traffic reuses the same few connections); as long as the caller keeps at
    most ``max_connections`` requests in flight (CloudflareAPI does), that pool has a free
    connection, so no request waits in one pool while another has room.
    """

    def __init__(
        self, *, limits: httpx.Limits, shards: int = 8, verify: ssl.SSLContext | bool = True
    ) -> None:
        total = limits.max_connections or 64
        shards = max(1, min(shards, total))
        size = -(-total // shards)
        keep = (
            size
            if limits.max_keepalive_connections is None
            else min(size, -(-limits.max_keepalive_connections // shards))
        )
        each = httpx.Limits(max_connections=size, max_keepalive_connections=keep,
                            keepalive_expiry=limits.keepalive_expiry)  # fmt: skip
        context = httpx.create_ssl_context(verify=verify)  # one certificate store for all
        self._pools = [AsyncioTransport(limits=each, verify=context) for _ in range(shards)]
        self._busy = [0] * shards

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        busy = self._busy
        shard = busy.index(min(busy))
        busy[shard] += 1
        try:
            response = await self._pools[shard].handle_async_request(request)
        except BaseException:
            busy[shard] -= 1
            raise
        assert isinstance(response.stream, httpx.AsyncByteStream)
        response.stream = _Released(response.stream, busy, shard)
        return response

    async def aclose(self) -> None:
        for pool in self._pools:
            await pool.aclose()


class Client(httpx.AsyncClient):
    """httpx's client, whose answers are freed as soon as the caller drops them.

    httpx binds each response's stream to the response (``BoundAsyncStream``: a reference
    cycle), so every answer, its body and httpcore's bookkeeping of its request (~40 objects)
    waited for the cycle collector, which at the bot's young-generation threshold runs seldom:
    ~6.5 MB of such garbage at the end of bench_process.py's 200 burst. Once httpx has read
    and closed a response (any send without ``stream=True``), its stream is replaced by the
    body already read, and reference counting frees it all when the caller is done.
    """

    async def send(
        self,
        request: httpx.Request,
        *,
        stream: bool = False,
        auth: Any = httpx.USE_CLIENT_DEFAULT,
        follow_redirects: Any = httpx.USE_CLIENT_DEFAULT,
    ) -> httpx.Response:
        response = await super().send(
            request, stream=stream, auth=auth, follow_redirects=follow_redirects
        )
        if not stream:
            for read in (*response.history, response):  # every one read and closed by httpx
                read.stream = httpx.ByteStream(read.content)
        return response
