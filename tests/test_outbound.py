"""bot.outbound over real sockets: an aiohttp receiver on 127.0.0.1 records every request and
answers from a script. No real waiting: retries sleep through a recording fake."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import ipaddress
import json
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
from aiohttp import web

from bot import outbound
from bot.errors import InvalidRequest
from bot.outbound import (
    ONLY_HTTPS,
    PRIVATE_ADDRESS,
    SIGNATURE_HEADER,
    UNRESOLVABLE,
    Delivery,
    UnsafeURL,
    check_url,
    deliver_webhook,
    fetch_bytes,
    is_public_address,
    sign,
)

SECRET = "TEST-SECRET-webhook-key-5e1f"
PAYLOAD: dict[str, Any] = {"zeta": 1, "alpha": {"b": [1, 2], "a": "é"}, "id": "job-1"}
PNG_BYTES = b"\x89PNG\r\n\x1a\n" + b"x" * 2000
BIG_CHUNK = 16 * 1024
BIG_CHUNKS = 200


@dataclass
class Received:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes


@dataclass
class Receiver:
    """Records requests; ``/hook`` answers from ``script`` (status, headers), then 200."""

    base: str = ""
    log: list[Received] = field(default_factory=list)
    script: list[tuple[int, dict[str, str]]] = field(default_factory=list)
    big_sent: int = 0
    release: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def netloc(self) -> str:
        return urlsplit(self.base).netloc

    def url(self, path: str) -> str:
        return self.base + path

    async def record(self, request: web.Request) -> None:
        body = await request.read()
        self.log.append(Received(request.method, request.path_qs, dict(request.headers), body))

    async def hook(self, request: web.Request) -> web.StreamResponse:
        await self.record(request)
        status, headers = self.script.pop(0) if self.script else (200, {})
        if 300 <= status < 400:
            headers = {"Location": self.url("/hook"), **headers}
        return web.Response(status=status, headers=headers, text="ok")

    async def file(self, request: web.Request) -> web.StreamResponse:
        await self.record(request)
        return web.Response(body=PNG_BYTES, content_type="image/png")

    async def big(self, request: web.Request) -> web.StreamResponse:
        """A chunked body (no Content-Length) far larger than any test's limit."""
        await self.record(request)
        response = web.StreamResponse(headers={"Content-Type": "image/png"})
        await response.prepare(request)
        with contextlib.suppress(ConnectionError):
            for _ in range(BIG_CHUNKS):
                await response.write(b"y" * BIG_CHUNK)
                self.big_sent += 1
                await asyncio.sleep(0.005)
            await response.write_eof()
        return response

    async def slow(self, request: web.Request) -> web.StreamResponse:
        await self.record(request)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(10):
                await self.release.wait()
        return web.Response(text="late")

    async def redirect(self, request: web.Request) -> web.StreamResponse:
        """``/redirect/N`` redirects N times (relative Locations), then lands on ``/file``."""
        await self.record(request)
        left = int(request.match_info["n"])
        location = f"/redirect/{left - 1}" if left > 1 else "/file"
        raise web.HTTPFound(location)

    async def to(self, request: web.Request) -> web.StreamResponse:
        await self.record(request)
        raise web.HTTPFound(request.query["location"])

    async def status(self, request: web.Request) -> web.StreamResponse:
        await self.record(request)
        return web.Response(status=int(request.match_info["code"]), text="nope")


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    rec = Receiver()
    app = web.Application()
    app.router.add_post("/hook", rec.hook)
    app.router.add_get("/file", rec.file)
    app.router.add_get("/big", rec.big)
    app.router.add_route("*", "/slow", rec.slow)
    app.router.add_get("/redirect/{n}", rec.redirect)
    app.router.add_get("/to", rec.to)
    app.router.add_get("/status/{code}", rec.status)
    runner = web.AppRunner(app, shutdown_timeout=1.0, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    rec.base = f"http://127.0.0.1:{port}"
    try:
        yield rec
    finally:
        rec.release.set()
        await runner.cleanup()


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(trust_env=False) as client:  # no proxy from the environment
        yield client


class FakeSleep:
    def __init__(self) -> None:
        self.delays: list[float] = []

    async def __call__(self, delay: float) -> None:
        self.delays.append(delay)


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def spy_check_url(monkeypatch: pytest.MonkeyPatch, allow: Any) -> list[str]:
    """Replace outbound.check_url with a recorder; ``allow(url, n)`` decides allow_private."""
    real = outbound.check_url
    calls: list[str] = []

    async def spy(url: str, *, allow_private: bool = False, field: str = "url") -> None:
        calls.append(url)
        await real(url, allow_private=allow_private and allow(url, len(calls)), field=field)

    monkeypatch.setattr(outbound, "check_url", spy)
    return calls


# --------------------------------------------------------------------------- signing


def test_sign_is_hex_hmac_sha256() -> None:
    expected = hmac.new(b"k\xc3\xa9y", b"body", hashlib.sha256).hexdigest()
    assert sign("kéy", b"body") == expected


# --------------------------------------------------------------------------- webhooks


async def test_webhook_delivered_with_verifiable_signature(
    receiver: Receiver, http: httpx.AsyncClient
) -> None:
    result = await deliver_webhook(
        http, receiver.url("/hook"), PAYLOAD, SECRET, delivery_id="d-1", allow_private=True
    )
    assert result == Delivery(delivered=True, attempts=1, status=200, error=None)
    [got] = receiver.log
    assert got.body == json.dumps(PAYLOAD, separators=(",", ":"), sort_keys=True).encode()
    assert got.body.startswith(b'{"alpha":{"a":')
    expected = "sha256=" + hmac.new(SECRET.encode(), got.body, hashlib.sha256).hexdigest()
    assert hmac.compare_digest(got.headers[SIGNATURE_HEADER], expected)
    assert got.headers["X-Webhook-Id"] == "d-1"
    assert got.headers["User-Agent"] == "cf-image-bot-webhooks"
    assert got.headers["Content-Type"] == "application/json"
    assert SECRET not in json.dumps(got.headers)


async def test_webhook_retries_then_succeeds(
    receiver: Receiver, http: httpx.AsyncClient, caplog: pytest.LogCaptureFixture
) -> None:
    receiver.script = [(500, {}), (429, {"Retry-After": "2"}), (200, {})]
    sleep = FakeSleep()
    caplog.set_level("INFO", logger="bot.outbound")
    result = await deliver_webhook(
        http,
        receiver.url("/hook"),
        PAYLOAD,
        SECRET,
        delivery_id="d-2",
        backoff_base=1.0,
        allow_private=True,
        sleep=sleep,
    )
    assert result == Delivery(delivered=True, attempts=3, status=200, error=None)
    assert len(receiver.log) == 3
    assert len({r.headers[SIGNATURE_HEADER] for r in receiver.log}) == 1
    assert {r.headers["X-Webhook-Id"] for r in receiver.log} == {"d-2"}
    assert len(sleep.delays) == 2
    assert 0.0 <= sleep.delays[0] <= 1.0  # full jitter on the first backoff step
    assert sleep.delays[1] == 2.0  # Retry-After honoured
    failures = [r.getMessage() for r in caplog.records]
    assert any("attempt 1/5" in m and "status=500" in m for m in failures)
    assert any("attempt 2/5" in m and "status=429" in m for m in failures)
    assert SECRET not in caplog.text


async def test_retry_after_is_capped_at_backoff_max(
    receiver: Receiver, http: httpx.AsyncClient
) -> None:
    receiver.script = [(429, {"Retry-After": "3600"}), (200, {})]
    sleep = FakeSleep()
    result = await deliver_webhook(
        http,
        receiver.url("/hook"),
        PAYLOAD,
        SECRET,
        delivery_id="d-3",
        backoff_max=7.5,
        allow_private=True,
        sleep=sleep,
    )
    assert result.delivered
    assert sleep.delays == [7.5]


@pytest.mark.parametrize("status", [400, 401, 404, 410, 302])
async def test_client_errors_and_redirects_are_not_retried(
    receiver: Receiver, http: httpx.AsyncClient, status: int
) -> None:
    receiver.script = [(status, {})]
    sleep = FakeSleep()
    result = await deliver_webhook(
        http,
        receiver.url("/hook"),
        PAYLOAD,
        SECRET,
        delivery_id="d-4",
        allow_private=True,
        sleep=sleep,
    )
    assert result.delivered is False
    assert result.attempts == 1
    assert result.status == status
    assert result.error is not None and str(status) in result.error
    assert len(receiver.log) == 1  # a 302 is not followed either
    assert sleep.delays == []


async def test_all_server_errors_exhaust_attempts(
    receiver: Receiver, http: httpx.AsyncClient
) -> None:
    receiver.script = [(500, {}), (503, {}), (502, {}), (500, {})]
    sleep = FakeSleep()
    result = await deliver_webhook(
        http,
        receiver.url("/hook"),
        PAYLOAD,
        SECRET,
        delivery_id="d-5",
        attempts=4,
        backoff_base=0.5,
        backoff_max=1.5,
        allow_private=True,
        sleep=sleep,
    )
    assert result.delivered is False
    assert result.attempts == 4
    assert result.status == 500
    assert result.error is not None and "4 attempts" in result.error
    assert len(receiver.log) == 4
    assert len(sleep.delays) == 3  # none after the last attempt
    for step, delay in enumerate(sleep.delays):
        assert 0.0 <= delay <= min(1.5, 0.5 * 2**step)


async def test_connection_errors_are_retried(http: httpx.AsyncClient) -> None:
    sleep = FakeSleep()
    result = await deliver_webhook(
        http,
        f"http://127.0.0.1:{closed_port()}/hook",
        PAYLOAD,
        SECRET,
        delivery_id="d-6",
        attempts=3,
        allow_private=True,
        sleep=sleep,
    )
    assert result.delivered is False
    assert result.attempts == 3
    assert result.status is None
    assert result.error is not None and "could not be reached" in result.error
    assert len(sleep.delays) == 2


async def test_webhook_timeout_is_retried(receiver: Receiver, http: httpx.AsyncClient) -> None:
    sleep = FakeSleep()
    result = await deliver_webhook(
        http,
        receiver.url("/slow"),
        PAYLOAD,
        SECRET,
        delivery_id="d-7",
        attempts=2,
        timeout=0.2,
        allow_private=True,
        sleep=sleep,
    )
    assert result.delivered is False
    assert result.attempts == 2
    assert result.error is not None and "too long" in result.error
    assert len(receiver.log) == 2


@pytest.mark.parametrize(("scheme", "message"), [("https", PRIVATE_ADDRESS), ("http", ONLY_HTTPS)])
async def test_webhook_to_loopback_refused_without_allow_private(
    receiver: Receiver, http: httpx.AsyncClient, scheme: str, message: str
) -> None:
    url = f"{scheme}://{receiver.netloc}/hook"
    result = await deliver_webhook(http, url, PAYLOAD, SECRET, delivery_id="d-8")
    assert result == Delivery(delivered=False, attempts=0, status=None, error=message)
    assert receiver.log == []


async def test_webhook_rechecks_address_before_every_attempt(
    receiver: Receiver, http: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """After the first attempt the host "turns private": later checks use production rules."""
    real = outbound.check_url
    calls: list[str] = []

    async def turning_private(url: str, *, allow_private: bool = False, field: str = "url") -> None:
        calls.append(url)
        if len(calls) == 1:
            await real(url, allow_private=allow_private, field=field)
        else:  # same host, judged as production would judge it (https so the scheme passes)
            await real(url.replace("http://", "https://", 1), allow_private=False, field=field)

    monkeypatch.setattr(outbound, "check_url", turning_private)
    receiver.script = [(500, {}), (200, {})]
    sleep = FakeSleep()
    result = await deliver_webhook(
        http,
        receiver.url("/hook"),
        PAYLOAD,
        SECRET,
        delivery_id="d-9",
        allow_private=True,
        sleep=sleep,
    )
    assert result == Delivery(delivered=False, attempts=1, status=500, error=PRIVATE_ADDRESS)
    assert len(receiver.log) == 1  # the refused attempt sent nothing
    assert len(calls) == 2


async def test_webhook_checks_before_each_of_several_attempts(
    receiver: Receiver, http: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = spy_check_url(monkeypatch, lambda url, n: True)
    receiver.script = [(500, {}), (408, {}), (200, {})]
    result = await deliver_webhook(
        http,
        receiver.url("/hook"),
        PAYLOAD,
        SECRET,
        delivery_id="d-10",
        allow_private=True,
        sleep=FakeSleep(),
    )
    assert result.delivered and result.attempts == 3
    assert len(calls) == 3


# --------------------------------------------------------------------------- check_url


@pytest.mark.parametrize(
    "url",
    [
        "https://93.184.216.34/",
        "https://93.184.216.34:8443/some/path?q=1",
        "https://[2606:4700:4700::1111]/",
        "https://[::ffff:93.184.216.34]/",
    ],
)
async def test_check_url_accepts_public_https(url: str) -> None:
    await check_url(url)


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("http://93.184.216.34/", ONLY_HTTPS),
        ("ftp://93.184.216.34/file", ONLY_HTTPS),
        ("file:///etc/passwd", ONLY_HTTPS),
        ("https://user:pw@93.184.216.34/", "user name or password"),
        ("https://93.184.216.34\\@127.0.0.1/", "user name or password"),
        ("https://@93.184.216.34/", "user name or password"),
        ("https:///path-only", "no host"),
        ("https://127.0.0.1/", PRIVATE_ADDRESS),
        ("https://localhost/", PRIVATE_ADDRESS),
        ("https://[::1]/", PRIVATE_ADDRESS),
        ("https://10.0.0.1/", PRIVATE_ADDRESS),
        ("https://172.16.0.1/", PRIVATE_ADDRESS),
        ("https://192.168.1.1/", PRIVATE_ADDRESS),
        ("https://169.254.169.254/latest/meta-data/", PRIVATE_ADDRESS),
        ("https://100.64.0.1/", PRIVATE_ADDRESS),
        ("https://0.0.0.0/", PRIVATE_ADDRESS),
        ("https://224.0.0.1/", PRIVATE_ADDRESS),
        ("https://[fd00::1]/", PRIVATE_ADDRESS),
        ("https://[fe80::1]/", PRIVATE_ADDRESS),
        ("https://[::ffff:127.0.0.1]/", PRIVATE_ADDRESS),
        ("https://[64:ff9b::a9fe:a9fe]/", PRIVATE_ADDRESS),  # NAT64 of 169.254.169.254
        ("https://2130706433/", PRIVATE_ADDRESS),  # decimal 127.0.0.1
        ("http://2130706433/", ONLY_HTTPS),
        ("https://0x7f.1/", PRIVATE_ADDRESS),  # hex/short 127.0.0.1
        ("https://no-such-host.invalid/", UNRESOLVABLE),
        ("https://93.184.216.34:99999/", "invalid port"),
    ],
)
async def test_check_url_refuses(url: str, message: str) -> None:
    with pytest.raises(UnsafeURL) as caught:
        await check_url(url, field="webhook_url")
    assert message in caught.value.user_message
    assert caught.value.field == "webhook_url"
    assert caught.value.code == "unsafe_url"
    assert isinstance(caught.value, InvalidRequest)


@pytest.mark.parametrize(
    "url", ["http://127.0.0.1:8080/", "http://localhost/", "https://10.0.0.1/", "http://[::1]/"]
)
async def test_check_url_allow_private(url: str) -> None:
    await check_url(url, allow_private=True)


async def test_check_url_resolution_timeout(monkeypatch: pytest.MonkeyPatch) -> None:
    loop = asyncio.get_running_loop()

    async def hanging_getaddrinfo(*args: Any, **kwargs: Any) -> Any:
        await asyncio.sleep(30)

    monkeypatch.setattr(outbound, "RESOLVE_TIMEOUT", 0.05)
    monkeypatch.setattr(loop, "getaddrinfo", hanging_getaddrinfo)
    with pytest.raises(UnsafeURL, match="could not be resolved"):
        await check_url("https://slow.example/")


async def test_any_private_answer_refuses(monkeypatch: pytest.MonkeyPatch) -> None:
    async def mixed(host: str, port: int) -> list[str]:
        return ["93.184.216.34", "10.1.2.3"]

    monkeypatch.setattr(outbound, "_resolve", mixed)
    with pytest.raises(UnsafeURL, match="private or local"):
        await check_url("https://mixed.example/")


@pytest.mark.parametrize(
    ("address", "public"),
    [
        ("93.184.216.34", True),
        ("2606:4700:4700::1111", True),
        ("::ffff:8.8.8.8", True),
        ("64:ff9b::808:808", True),
        ("::ffff:10.0.0.1", False),
        ("2002:7f00:1::1", False),  # 6to4 of 127.0.0.1
        ("fec0::1", False),  # deprecated site-local
        ("ff02::1", False),
        ("239.1.1.1", False),
        ("198.18.0.1", False),
        ("240.0.0.1", False),
        ("255.255.255.255", False),
        ("::", False),
    ],
)
def test_is_public_address(address: str, public: bool) -> None:
    assert is_public_address(ipaddress.ip_address(address)) is public


# --------------------------------------------------------------------------- fetch_bytes


async def test_fetch_bytes_returns_body_and_media_type(
    receiver: Receiver, http: httpx.AsyncClient
) -> None:
    body, media_type = await fetch_bytes(
        http, receiver.url("/file"), max_bytes=10_000, allow_private=True
    )
    assert body == PNG_BYTES
    assert media_type == "image/png"


async def test_fetch_bytes_refuses_loopback_by_default(
    receiver: Receiver, http: httpx.AsyncClient
) -> None:
    with pytest.raises(UnsafeURL, match="private or local"):
        await fetch_bytes(http, f"https://{receiver.netloc}/file", max_bytes=10_000)
    assert receiver.log == []


async def test_fetch_bytes_stops_streaming_past_the_limit(
    receiver: Receiver, http: httpx.AsyncClient
) -> None:
    with pytest.raises(InvalidRequest) as caught:
        await fetch_bytes(http, receiver.url("/big"), max_bytes=100_000, allow_private=True)
    sent_when_refused = receiver.big_sent
    assert caught.value.field == "url"
    assert "larger than 0.1 MB" in caught.value.user_message
    assert sent_when_refused < BIG_CHUNKS  # gave up long before the whole body


async def test_fetch_bytes_refuses_declared_length_over_limit(
    receiver: Receiver, http: httpx.AsyncClient
) -> None:
    with pytest.raises(InvalidRequest, match="larger than"):
        await fetch_bytes(http, receiver.url("/file"), max_bytes=1000, allow_private=True)


async def test_fetch_bytes_follows_and_rechecks_redirects(
    receiver: Receiver, http: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = spy_check_url(monkeypatch, lambda url, n: True)
    body, _ = await fetch_bytes(
        http, receiver.url("/redirect/3"), max_bytes=10_000, allow_private=True, max_redirects=3
    )
    assert body == PNG_BYTES
    assert [urlsplit(u).path for u in calls] == [
        "/redirect/3",
        "/redirect/2",
        "/redirect/1",
        "/file",
    ]


async def test_fetch_bytes_too_many_redirects(receiver: Receiver, http: httpx.AsyncClient) -> None:
    with pytest.raises(InvalidRequest, match="redirected too many times"):
        await fetch_bytes(
            http, receiver.url("/redirect/5"), max_bytes=10_000, allow_private=True, max_redirects=2
        )
    assert len(receiver.log) == 3


@pytest.mark.parametrize(
    ("location", "message"),
    [
        ("https://169.254.169.254/latest/meta-data/", PRIVATE_ADDRESS),
        ("https://10.0.0.1/internal", PRIVATE_ADDRESS),
        ("https://[::ffff:127.0.0.1]/", PRIVATE_ADDRESS),
        ("http://localhost:1/admin", ONLY_HTTPS),
        ("ftp://93.184.216.34/x", ONLY_HTTPS),
    ],
)
async def test_fetch_bytes_redirect_to_private_refused(
    receiver: Receiver,
    http: httpx.AsyncClient,
    monkeypatch: pytest.MonkeyPatch,
    location: str,
    message: str,
) -> None:
    # Only the receiver itself is let through as "private"; every other hop gets production rules.
    calls = spy_check_url(monkeypatch, lambda url, n: urlsplit(url).netloc == receiver.netloc)
    start = receiver.url("/to?" + str(httpx.QueryParams({"location": location})))
    with pytest.raises(UnsafeURL) as caught:
        await fetch_bytes(http, start, max_bytes=10_000, allow_private=True)
    assert caught.value.user_message == message
    assert len(calls) == 2
    assert len(receiver.log) == 1


async def test_fetch_bytes_timeout(receiver: Receiver, http: httpx.AsyncClient) -> None:
    with pytest.raises(InvalidRequest) as caught:
        await fetch_bytes(
            http, receiver.url("/slow"), max_bytes=10_000, timeout=0.3, allow_private=True
        )
    assert caught.value.user_message == "The URL took too long to answer."
    assert caught.value.field == "url"


@pytest.mark.parametrize("status", [404, 500])
async def test_fetch_bytes_non_2xx(
    receiver: Receiver, http: httpx.AsyncClient, status: int
) -> None:
    with pytest.raises(InvalidRequest) as caught:
        await fetch_bytes(
            http, receiver.url(f"/status/{status}"), max_bytes=10_000, allow_private=True
        )
    assert f"HTTP {status}" in caught.value.user_message
    assert caught.value.details["status"] == status


async def test_fetch_bytes_connection_error(http: httpx.AsyncClient) -> None:
    with pytest.raises(InvalidRequest, match="could not be fetched"):
        await fetch_bytes(
            http, f"http://127.0.0.1:{closed_port()}/x", max_bytes=10_000, allow_private=True
        )
