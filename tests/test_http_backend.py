"""The asyncio network backend and the sharded transport (bot/http_backend.py), over real
sockets on 127.0.0.1: plain HTTP and TLS with a self-signed certificate (SNI and verification),
httpx's own timeout exceptions, a server that closes an idle connection, flow control on a
large body, no socket left open by a cancelled request, and no request waiting in one shard's
pool while another has room; the bot's client leaves no response as cyclic garbage."""

from __future__ import annotations

import asyncio
import gc
import ssl
import subprocess
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import httpx
import pytest

from bot.http_backend import (
    READ_AHEAD_BYTES,
    AsyncioStream,
    AsyncioTransport,
    Client,
    ShardedTransport,
)
from bot.runtime import HTTP_LIMITS

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]
LIMITS = httpx.Limits(max_connections=4, max_keepalive_connections=4)
OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"


class Server:
    """A raw HTTP/1.1 server: ``handler`` per connection; counts connections and their ends."""

    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.opened = 0
        self.ended = 0  # connections whose client side closed (EOF or reset)
        self.server_names: list[str | None] = []

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.opened += 1
        try:
            await self.handler(reader, writer)
            while await reader.read(65536):  # what is left, until the client closes
                pass
        except (ConnectionError, ssl.SSLError, asyncio.CancelledError):  # or the test's end
            pass
        finally:
            self.ended += 1
            writer.close()


async def answer_each(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Answers 'ok' to every request on the connection (keep-alive)."""
    while True:
        head = await reader.readuntil(b"\r\n\r\n")
        length = next((int(line.split(b":")[1]) for line in head.split(b"\r\n")
                       if line.lower().startswith(b"content-length:")), 0)  # fmt: skip
        await reader.readexactly(length)
        writer.write(OK)
        await writer.drain()


async def never_read(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await asyncio.Event().wait()


async def never_answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Reads every request (and the client's end: Server counts it), answers none."""


async def until(condition: Callable[[], bool]) -> None:
    """Polls ``condition`` (at most 10 s: a broken feature fails here, not hangs)."""
    for _ in range(1000):
        if condition():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("the condition never held")


@asynccontextmanager
async def serving(
    handler: Handler, context: ssl.SSLContext | None = None
) -> AsyncIterator[tuple[Server, int]]:
    server = Server(handler)
    listener = await asyncio.start_server(server.serve, "127.0.0.1", 0, ssl=context)
    try:
        yield server, listener.sockets[0].getsockname()[1]
    finally:
        listener.close()


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A self-signed certificate for localhost (DNS name only, so 127.0.0.1 does not match)."""
    folder = tmp_path_factory.mktemp("tls")
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(  # noqa: S603
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",  # noqa: S607
         "-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost",
         "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True,
    )  # fmt: skip
    return cert, key


def server_context(certificate: tuple[Path, Path], server: list[Server]) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(*certificate)
    context.sni_callback = lambda sock, name, ctx: server[0].server_names.append(name)  # type: ignore[assignment,misc]
    return context


async def test_plain_http_keeps_the_connection_and_uses_the_asyncio_stream() -> None:
    async with (
        serving(answer_each) as (server, port),
        httpx.AsyncClient(transport=AsyncioTransport(limits=LIMITS)) as http,
    ):
        responses = [await http.post(f"http://127.0.0.1:{port}/", json={"n": n}) for n in range(3)]
    assert [r.text for r in responses] == ["ok"] * 3
    assert isinstance(responses[0].extensions["network_stream"], AsyncioStream)
    assert server.opened == 1  # kept alive: an idle connection is not taken for closed


async def test_tls_sends_the_host_name_and_verifies_the_certificate(
    certificate: tuple[Path, Path],
) -> None:
    holder: list[Server] = []
    trusted = ssl.create_default_context(cafile=str(certificate[0]))
    async with serving(answer_each, server_context(certificate, holder)) as (server, port):
        holder.append(server)
        async with httpx.AsyncClient(
            transport=AsyncioTransport(limits=LIMITS, verify=trusted)
        ) as http:
            response = await http.get(f"https://localhost:{port}/")
            stream = response.extensions["network_stream"]
            assert response.text == "ok"
            assert stream.get_extra_info("ssl_object").version().startswith("TLS")
            assert stream.get_extra_info("server_addr")[1] == port
            with pytest.raises(httpx.ConnectError):  # the certificate does not name 127.0.0.1
                await http.get(f"https://127.0.0.1:{port}/")
        async with httpx.AsyncClient(transport=AsyncioTransport(limits=LIMITS)) as http:
            with pytest.raises(httpx.ConnectError):  # self-signed: not in the default store
                await http.get(f"https://localhost:{port}/")
    assert server.server_names[0] == "localhost"


async def test_timeouts_raise_httpxs_own_exceptions() -> None:
    async with (
        serving(never_read) as (_, port),
        httpx.AsyncClient(
            transport=AsyncioTransport(limits=httpx.Limits(max_connections=1))
        ) as http,
    ):
        url = f"http://127.0.0.1:{port}/"
        with pytest.raises(httpx.ReadTimeout):
            await http.get(url, timeout=httpx.Timeout(5.0, read=0.05))
        with pytest.raises(httpx.WriteTimeout):  # the server reads nothing: the buffers fill
            await http.post(url, content=b"x" * 64_000_000, timeout=httpx.Timeout(5.0, write=0.2))
        with pytest.raises(httpx.ConnectTimeout):  # a TLS handshake nobody answers
            await http.get(f"https://127.0.0.1:{port}/", timeout=httpx.Timeout(5.0, connect=0.05))
    async with (
        serving(answer_each) as (_, port),
        httpx.AsyncClient(
            transport=AsyncioTransport(limits=httpx.Limits(max_connections=1))
        ) as http,
        http.stream("GET", f"http://127.0.0.1:{port}/"),
    ):  # its body not read yet
        with pytest.raises(httpx.PoolTimeout):  # the one connection is taken
            await http.get(f"http://127.0.0.1:{port}/", timeout=httpx.Timeout(5.0, pool=0.05))
    async with httpx.AsyncClient(transport=AsyncioTransport(limits=LIMITS)) as http:
        with pytest.raises(httpx.ConnectError):  # nothing listens there any more
            await http.get(url)


async def test_a_connection_the_server_closed_while_idle_is_not_reused() -> None:
    async def once(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(OK)
        await writer.drain()
        writer.close()

    async with (
        serving(once) as (server, port),
        httpx.AsyncClient(transport=AsyncioTransport(limits=LIMITS)) as http,
    ):
        first = await http.get(f"http://127.0.0.1:{port}/")
        stream = first.extensions["network_stream"]
        await until(lambda: stream.get_extra_info("is_readable"))  # the loop read its end
        second = await http.get(f"http://127.0.0.1:{port}/")  # reused, it would fail
    assert second.text == "ok" and server.opened == 2


async def test_a_large_body_arrives_whole_with_bounded_read_ahead() -> None:
    body = bytes(range(256)) * 8192  # 2 MiB

    async def large(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(body) + body)
        await writer.drain()

    most = 0
    async with (
        serving(large) as (_, port),
        httpx.AsyncClient(transport=AsyncioTransport(limits=LIMITS)) as http,
        http.stream("GET", f"http://127.0.0.1:{port}/") as response,
    ):
        connection = response.extensions["network_stream"]._connection
        received = bytearray()
        async for chunk in response.aiter_raw():
            received += chunk
            most = max(most, len(connection.buffer))
            await asyncio.sleep(0)  # a slow reader: the socket fills the buffer meanwhile
    assert bytes(received) == body
    assert most < READ_AHEAD_BYTES + 65536 * 4  # paused near the bound, not 2 MiB


async def test_cancelled_requests_close_their_sockets() -> None:
    async with (
        serving(never_answer) as (server, port),
        httpx.AsyncClient(transport=ShardedTransport(limits=LIMITS, shards=2)) as http,
    ):
        calls = [asyncio.create_task(http.get(f"http://127.0.0.1:{port}/")) for _ in range(4)]
        await until(lambda: server.opened == 4)
        for call in calls:
            call.cancel()
        await asyncio.gather(*calls, return_exceptions=True)
        await until(lambda: server.ended == 4)  # each socket closed, the client still open
        again = [asyncio.create_task(http.get(f"http://127.0.0.1:{port}/")) for _ in range(4)]
        await until(lambda: server.opened == 8)  # the shards' counts came back: 4 at once
        for call in again:
            call.cancel()
        await asyncio.gather(*again, return_exceptions=True)


async def test_shards_take_requests_up_to_the_total_without_a_queue() -> None:
    release = asyncio.Event()
    waiting = 0

    async def held(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal waiting
        while True:
            await reader.readuntil(b"\r\n\r\n")
            waiting += 1
            await release.wait()
            writer.write(OK)
            await writer.drain()

    limits = httpx.Limits(max_connections=6, max_keepalive_connections=6)
    async with (
        serving(held) as (server, port),
        httpx.AsyncClient(
            transport=ShardedTransport(limits=limits, shards=3),
            timeout=httpx.Timeout(5.0, pool=5.0),
        ) as http,
    ):
        calls = [asyncio.create_task(http.get(f"http://127.0.0.1:{port}/")) for _ in range(6)]
        await until(lambda: waiting == 6)  # were a shard chosen blindly, some would queue
        release.set()
        assert [r.text for r in await asyncio.gather(*calls)] == ["ok"] * 6
        for _ in range(3):  # light traffic: one connection of the first shard, again and again
            await http.get(f"http://127.0.0.1:{port}/")
    assert server.opened == 6


def test_the_bots_pools_split_the_connections_evenly() -> None:
    transport = ShardedTransport(limits=HTTP_LIMITS)
    sizes = [pool._pool._max_connections for pool in transport._pools]
    assert sum(sizes) == HTTP_LIMITS.max_connections and len(set(sizes)) == 1


async def moved_or_ok(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """GET /old is a 302 to /new; every other request is 'ok' (keep-alive)."""
    while True:
        head = await reader.readuntil(b"\r\n\r\n")
        if head.startswith(b"GET /old "):
            writer.write(b"HTTP/1.1 302 Found\r\nLocation: /new\r\nContent-Length: 0\r\n\r\n")
        else:
            writer.write(OK)
        await writer.drain()


async def http_garbage(client: type[httpx.AsyncClient]) -> tuple[int, list[str]]:
    """httpx and httpcore objects left as cyclic garbage by 20 requests (some redirected)."""
    async with (
        serving(moved_or_ok) as (_, port),
        client(transport=ShardedTransport(limits=LIMITS), follow_redirects=True) as http,
    ):
        gc.collect()
        gc.disable()
        gc.set_debug(gc.DEBUG_SAVEALL)
        try:
            texts = []
            for n in range(20):
                response = await http.get(f"http://127.0.0.1:{port}/{'old' if n % 2 else n}")
                texts.append(response.text)
            del response
            gc.collect()
            left = sum(type(o).__module__.startswith(("httpx", "httpcore")) for o in gc.garbage)
        finally:
            gc.set_debug(0)
            gc.garbage.clear()
            gc.enable()
    return left, texts


async def test_the_bots_client_frees_its_answers_without_the_cycle_collector() -> None:
    left, texts = await http_garbage(Client)
    assert texts == ["ok"] * 20  # the bodies, redirected or not, read as before
    assert left == 0
    plain, _ = await http_garbage(httpx.AsyncClient)  # what httpx alone leaves behind
    assert plain >= 20
