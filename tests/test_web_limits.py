"""Nothing a stranger sends exhausts the web server (issue 13): bounded variants, their own pool,
a rate limit per address, header/body/keep-alive timeouts, a body cap over every multipart
part, JSON for every refusal (even the HTTP parser's), no version in ``Server``.

Everything runs against the real server as ``python -m bot serve`` starts it
(``start_web_server``) on 127.0.0.1; clients that must misbehave are raw asyncio streams.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import logging
import threading
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from aiohttp import web
from PIL import Image

from bot.config import Settings
from bot.runtime import Runtime, open_runtime
from bot.web.app import start_web_server
from bot.web.server import warn_if_exposed

# The server's clocks are configured to 1 s here; a refusal must arrive well within this.
CUT_OFF_WITHIN = 8.0


def tall_png(width: int = 2, height: int = 12_000) -> bytes:
    """The issue's upload: 2×12,000 pixels, a few hundred bytes."""
    out = io.BytesIO()
    Image.new("RGB", (width, height), "purple").save(out, format="PNG")
    return out.getvalue()


def stored_files(runtime: Runtime) -> int:
    root = runtime.settings.data_dir / "images"
    return sum(1 for path in root.rglob("*") if path.is_file()) if root.exists() else 0


@dataclass
class Served:
    runtime: Runtime
    runner: web.AppRunner
    host: str
    port: int

    @property
    def base(self) -> str:
        return f"http://{self.host}:{self.port}"

    async def open(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        return await asyncio.open_connection(self.host, self.port)


@pytest.fixture
def serve(make_settings: Callable[..., Settings]) -> Callable[..., Any]:
    """``async with serve(**env) as served``: the real server with these settings."""

    @contextlib.asynccontextmanager
    async def run(**env: Any) -> AsyncIterator[Served]:
        settings = make_settings(WEB_HOST="127.0.0.1", WEB_PORT=0, **env)
        async with open_runtime(settings) as runtime:
            runner = await start_web_server(runtime)
            try:
                host, port = runner.addresses[0][:2]
                yield Served(runtime, runner, host, port)
            finally:
                await runner.cleanup()

    return run


async def read_response(reader: asyncio.StreamReader) -> tuple[int, dict[str, str], bytes]:
    """One HTTP/1.1 response (status, lower-case headers, body) read off a raw stream."""
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {}
    for line in lines[1:]:
        if ":" in line:
            name, value = line.split(":", 1)
            headers[name.strip().lower()] = value.strip()
    body = await reader.readexactly(int(headers.get("content-length", "0")))
    return status, headers, body


def assert_json_error(status: int, headers: dict[str, str], body: bytes, expected: int) -> Any:
    assert status == expected, body
    assert headers["content-type"].startswith("application/json")
    assert headers["server"] == "cf-image-bot"
    data = json.loads(body)
    assert set(data) == {"error", "details"}
    assert isinstance(data["details"], dict)
    return data


async def closed_by_server(reader: asyncio.StreamReader) -> bool:
    """True once the server has closed the connection (EOF or reset)."""
    try:
        return await reader.read(65536) == b""
    except ConnectionResetError:
        return True


# --------------------------------------------------------------------------- bounded variants


async def test_every_variant_of_a_2_by_12000_upload_is_bounded_or_a_400(
    serve: Callable[..., Any],
) -> None:
    async with serve() as served:
        _, token = await served.runtime.keys.create(user_id="u1", guild_id="", name="t")
        async with httpx.AsyncClient(base_url=served.base, timeout=30.0) as http:
            uploaded = await http.post(
                "/api/upload",
                files={"file": ("tall.png", tall_png(), "image/png")},
                headers={"Authorization": f"Bearer {token}"},
            )
            assert uploaded.status_code == 201, uploaded.text
            image_id = uploaded.json()["image"]["storage_key"]
            refused = {
                "w=400,fit=cover": 2_400_000,  # the 400×2,400,000 PNG
                "w=4096,fit=contain": 24_576_000,  # the issue's ~100 GB
                "w=400": 12_000,  # scale-down keeps the 12,000 side the caller did not give
            }
            for variant, long_side in refused.items():
                response = await http.get(f"/images/{image_id}/{variant}")
                assert response.status_code == 400, (variant, response.status_code)
                body = response.json()
                assert set(body) == {"error", "details"}
                details = body["details"]
                assert details["field"] == "variant"
                assert max(details["width"], details["height"]) == long_side
                assert (details["max_side"], details["max_pixels"]) == (4096, 4096 * 4096)
            served_variants = [
                "w=400,h=400,fit=cover",
                "w=4096,h=4096,fit=pad",
                "w=4096,h=4096,fit=contain",
                "w=4096,h=4096,fit=scale-down",
                "w=4096,h=4096,fit=crop",
                "w=4096,h=4096,fit=cover",
                "h=4096,fit=contain",
                "h=300",
            ]
            for variant in served_variants:
                response = await http.get(f"/images/{image_id}/{variant}")
                assert response.status_code == 200, (variant, response.text)
                width, height = Image.open(io.BytesIO(response.content)).size
                assert max(width, height) <= 4096, variant
                assert width * height <= 4096 * 4096, variant


async def test_the_pixel_bound_is_configurable_and_covers_placeholders(
    serve: Callable[..., Any],
) -> None:
    async with serve(VARIANT_MAX_PIXELS=40_000, VARIANT_MAX_SIDE=1000) as served:
        record = await served.runtime.service.upload(tall_png(600, 400), user_id="u1")
        async with httpx.AsyncClient(base_url=served.base, timeout=30.0) as http:
            too_many = await http.get(f"/images/{record.id}/w=300,h=300,fit=cover")
            assert too_many.status_code == 400
            assert too_many.json()["details"]["max_pixels"] == 40_000
            too_long = await http.get(f"/images/{record.id}/w=1001")
            assert too_long.status_code == 400
            fine = await http.get(f"/images/{record.id}/w=200,h=200,fit=cover")
            assert fine.status_code == 200
            assert Image.open(io.BytesIO(fine.content)).size == (200, 200)

            before = stored_files(served.runtime)
            placeholder = await http.get("/300x300/happy-robot")
            assert placeholder.status_code == 400  # the help page; nothing was generated
            assert placeholder.headers["content-type"].startswith("text/html")
            assert "40,000" in placeholder.text
            assert stored_files(served.runtime) == before
            small = await http.get("/200x200/happy-robot")
            assert small.status_code == 200
            assert Image.open(io.BytesIO(small.content)).size == (200, 200)


# --------------------------------------------------------------------------- the variant pool


async def test_variants_wait_in_their_own_pool_and_generation_does_not(
    serve: Callable[..., Any],
) -> None:
    """With every variant thread held, generation still completes, queued variants wait, and
    past the pool's bounded queue a variant request is a 429 Busy, not another waiter."""
    from bot.requests import GenerateRequest
    from bot.variants import WAITING_PER_WORKER

    async with serve(VARIANT_WORKERS=1) as served:
        variants = served.runtime.variants
        record = await served.runtime.service.upload(tall_png(300, 200), user_id="u1")
        gate = threading.Event()
        held = asyncio.get_running_loop().run_in_executor(variants._pool, gate.wait)
        try:
            async with httpx.AsyncClient(base_url=served.base, timeout=30.0) as http:
                waiting = [
                    asyncio.create_task(http.get(f"/images/{record.id}/w={10 + n}"))
                    for n in range(1 + WAITING_PER_WORKER)
                ]
                for _ in range(1000):  # until every admission slot is taken
                    if variants._admitted.locked():
                        break
                    await asyncio.sleep(0.01)
                busy = await http.get(f"/images/{record.id}/w=99")
                assert busy.status_code == 429
                assert busy.headers["retry-after"]
                assert busy.json()["details"]["code"] == "busy"

                result = await asyncio.wait_for(
                    served.runtime.service.generate(
                        GenerateRequest(prompt="a lighthouse at dusk", user_id="u2")
                    ),
                    timeout=60,
                )
                assert result.images
                assert not any(task.done() for task in waiting)  # still behind the gate

                gate.set()
                for task in waiting:
                    assert (await task).status_code == 200
        finally:
            gate.set()
            await held


async def test_a_variant_is_rendered_once_and_then_cached(serve: Callable[..., Any]) -> None:
    async with serve() as served:
        record = await served.runtime.service.upload(tall_png(300, 200), user_id="u1")
        variants = served.runtime.variants
        async with httpx.AsyncClient(base_url=served.base, timeout=30.0) as http:
            answers = await asyncio.gather(
                *(http.get(f"/images/{record.id}/w=150,h=100,fit=cover") for _ in range(8))
            )
        assert {a.status_code for a in answers} == {200}
        assert len({a.content for a in answers}) == 1
        assert variants.cached((record.id, "w=150,h=100,fit=cover")) is not None
        assert variants.cache.size == len(answers[0].content)  # one render, one entry


# --------------------------------------------------------------------------- anonymous rate


async def test_anonymous_image_requests_are_rate_limited_per_address(
    serve: Callable[..., Any],
) -> None:
    async with serve(IMAGE_RATE_PER_MINUTE=5) as served:
        record = await served.runtime.service.upload(tall_png(30, 20), user_id="u1")
        async with httpx.AsyncClient(base_url=served.base, timeout=30.0) as http:
            for n in range(4):
                response = await http.get(f"/images/{record.id}/w={10 + n}")
                assert response.status_code == 200
            assert (await http.get("/64x64/happy-robot")).status_code == 200  # the 5th
            limited = await http.get(f"/images/{record.id}/public")
            assert limited.status_code == 429
            assert int(limited.headers["retry-after"]) >= 1
            assert limited.json()["details"]["code"] == "rate_limited"
            assert (await http.get("/64x64/happy-robot")).status_code == 429
            # The API has its own per-key limit: an API call is not refused by this one.
            assert (await http.get("/api/models")).status_code == 200


async def test_behind_a_trusted_proxy_the_limit_is_per_forwarded_visitor(
    serve: Callable[..., Any],
) -> None:
    async with serve(IMAGE_RATE_PER_MINUTE=2, WEB_TRUSTED_PROXIES="127.0.0.1") as served:
        record = await served.runtime.service.upload(tall_png(30, 20), user_id="u1")
        path = f"/images/{record.id}/public"
        async with httpx.AsyncClient(base_url=served.base, timeout=30.0) as http:

            async def as_visitor(chain: str) -> int:
                response = await http.get(path, headers={"X-Forwarded-For": chain})
                return response.status_code

            # The proxy appends the visitor's address; anything before it is the visitor's claim.
            assert [await as_visitor(f"10.9.9.{n}, 203.0.113.5") for n in range(3)] == [
                200, 200, 429,
            ]  # fmt: skip
            assert await as_visitor("203.0.113.6") == 200  # another visitor, its own budget


async def test_x_forwarded_for_from_an_untrusted_peer_is_ignored(
    serve: Callable[..., Any],
) -> None:
    async with serve(IMAGE_RATE_PER_MINUTE=2) as served:
        record = await served.runtime.service.upload(tall_png(30, 20), user_id="u1")
        async with httpx.AsyncClient(base_url=served.base, timeout=30.0) as http:
            statuses = [
                (
                    await http.get(
                        f"/images/{record.id}/public",
                        headers={"X-Forwarded-For": f"198.51.100.{n}"},
                    )
                ).status_code
                for n in range(3)
            ]
        assert statuses == [200, 200, 429]  # a new claimed address each time changes nothing


# --------------------------------------------------------------------------- timeouts


async def test_slow_headers_are_cut_off_within_the_header_timeout(
    serve: Callable[..., Any],
) -> None:
    async with serve(WEB_HEADER_TIMEOUT_SECONDS=1, WEB_KEEPALIVE_SECONDS=600) as served:
        reader, writer = await served.open()
        writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")

        async def trickle() -> None:
            with contextlib.suppress(ConnectionError):
                while True:
                    writer.write(b"X")  # one byte of a header, forever
                    await writer.drain()
                    await asyncio.sleep(0.3)

        dripping = asyncio.create_task(trickle())
        try:
            status, headers, body = await asyncio.wait_for(read_response(reader), CUT_OFF_WITHIN)
            assert_json_error(status, headers, body, 408)
            assert await asyncio.wait_for(closed_by_server(reader), CUT_OFF_WITHIN)
        finally:
            dripping.cancel()
            writer.close()


async def test_a_slow_body_is_cut_off_within_the_body_timeout(serve: Callable[..., Any]) -> None:
    async with serve(WEB_BODY_TIMEOUT_SECONDS=1, WEB_HEADER_TIMEOUT_SECONDS=30) as served:
        _, token = await served.runtime.keys.create(user_id="u1", guild_id="", name="t")
        reader, writer = await served.open()
        body = json.dumps({"name": "slow", "prompt": "a slow loris"}).encode()
        writer.write(
            post_head("/api/templates", token, JSON_TYPE, f"Content-Length: {len(body)}") + body[:5]
        )

        async def trickle() -> None:
            with contextlib.suppress(ConnectionError):
                for byte in body[5:]:
                    await asyncio.sleep(0.5)
                    writer.write(bytes([byte]))
                    await writer.drain()

        dripping = asyncio.create_task(trickle())
        try:
            status, headers, answer = await asyncio.wait_for(read_response(reader), CUT_OFF_WITHIN)
            data = assert_json_error(status, headers, answer, 408)
            assert data["details"]["code"] == "request_timeout"
            assert await asyncio.wait_for(closed_by_server(reader), CUT_OFF_WITHIN)
            assert not dripping.done()  # cut off long before the body would have arrived
        finally:
            dripping.cancel()
            writer.close()
        assert await served.runtime.admin.templates("user:u1") == []  # nothing half-made


async def test_an_idle_connection_is_closed_after_the_keepalive_timeout(
    serve: Callable[..., Any],
) -> None:
    async with serve(WEB_KEEPALIVE_SECONDS=1) as served:
        reader, writer = await served.open()
        writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        status, _, _ = await asyncio.wait_for(read_response(reader), CUT_OFF_WITHIN)
        assert status == 200
        try:
            assert await asyncio.wait_for(closed_by_server(reader), CUT_OFF_WITHIN)
        finally:
            writer.close()


# --------------------------------------------------------------------------- size


JSON_TYPE = "application/json"
MULTIPART_TYPE = "multipart/form-data; boundary=b0undary"


def post_head(path: str, token: str, content_type: str, framing: str) -> bytes:
    """A POST's request line and headers, with the key, the type and the body's framing."""
    return (
        f"POST {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\n"
        f"Content-Type: {content_type}\r\n{framing}\r\n\r\n"
    ).encode()


def multipart_head(boundary: str, name: str) -> bytes:
    return (f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n').encode()


async def test_a_500_mb_part_that_is_not_the_file_is_refused_before_it_is_read(
    serve: Callable[..., Any],
) -> None:
    async with serve() as served:
        _, token = await served.runtime.keys.create(user_id="u1", guild_id="", name="t")
        reader, writer = await served.open()
        declared = 500 * 1024 * 1024
        writer.write(
            post_head("/api/upload", token, MULTIPART_TYPE, f"Content-Length: {declared}")
            + multipart_head("b0undary", "comment")
            + b"x" * 65536
        )
        await writer.drain()
        try:
            status, headers, body = await asyncio.wait_for(read_response(reader), CUT_OFF_WITHIN)
            data = assert_json_error(status, headers, body, 413)
            assert "11 MB" in data["details"]["message"]
        finally:
            writer.close()
        assert stored_files(served.runtime) == 0


async def test_a_chunked_body_is_refused_once_past_the_cap(serve: Callable[..., Any]) -> None:
    async with serve(WEB_MAX_REQUEST_MB=1) as served:
        _, token = await served.runtime.keys.create(user_id="u1", guild_id="", name="t")
        reader, writer = await served.open()
        writer.write(post_head("/api/upload", token, MULTIPART_TYPE, "Transfer-Encoding: chunked"))
        first = multipart_head("b0undary", "comment")
        writer.write(b"%x\r\n%s\r\n" % (len(first), first))
        piece = b"y" * 65536
        sent = 0

        async def send_until_refused() -> None:
            nonlocal sent
            with contextlib.suppress(ConnectionError):
                while sent < 50 * 1024 * 1024:
                    writer.write(b"%x\r\n%s\r\n" % (len(piece), piece))
                    await writer.drain()
                    sent += len(piece)

        sending = asyncio.create_task(send_until_refused())
        try:
            status, headers, body = await asyncio.wait_for(read_response(reader), CUT_OFF_WITHIN)
            assert_json_error(status, headers, body, 413)
            assert sent < 10 * 1024 * 1024  # refused after about 1 MB, not after 50
        finally:
            sending.cancel()
            writer.close()


# --------------------------------------------------------------------------- smaller items


@pytest.mark.parametrize(
    "query",
    [
        "to=0001-01-01",
        "from=0001-01-01",
        "from=9999-12-31",
        "to=9999-12-31",
        "from=9999-12-30&to=9999-12-31",
        "from=2000-01-01&to=2026-12-01",
    ],
)
async def test_any_analytics_date_is_a_clear_400_not_a_500(
    serve: Callable[..., Any], query: str
) -> None:
    async with serve() as served:
        _, token = await served.runtime.keys.create(user_id="u1", guild_id="", name="t")
        async with httpx.AsyncClient(base_url=served.base, timeout=30.0) as http:
            response = await http.get(
                f"/api/analytics/costs?{query}", headers={"Authorization": f"Bearer {token}"}
            )
        assert response.status_code == 400, response.text
        assert response.json()["details"]["field"] in ("from", "to")


@pytest.mark.parametrize(
    ("raw", "status"),
    [
        (b"GET /" + b"a" * 20_000 + b" HTTP/1.1\r\nHost: x\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\nHost: x\r\nX-Big: " + b"b" * 20_000 + b"\r\n\r\n", 400),
        (b"GARBAGE\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\nHost: x\r\nContent-Length: -5\r\n\r\n", 400),
    ],
    ids=["a too-long URL", "a too-large header", "not HTTP", "a negative length"],
)
async def test_http_parser_errors_get_the_json_error_shape(
    serve: Callable[..., Any], raw: bytes, status: int, caplog: pytest.LogCaptureFixture
) -> None:
    async with serve() as served:
        reader, writer = await served.open()
        writer.write(raw)
        try:
            got = await asyncio.wait_for(read_response(reader), CUT_OFF_WITHIN)
        finally:
            writer.close()
        assert_json_error(*got, status)
        assert b"aaaa" not in got[2] and b"bbbb" not in got[2]  # nothing echoed back
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


async def test_the_server_header_names_no_version(serve: Callable[..., Any]) -> None:
    async with serve() as served, httpx.AsyncClient(base_url=served.base, timeout=30.0) as http:
        for path in ("/healthz", "/api/models", "/nowhere", "/images/img_0/public"):
            response = await http.get(path)
            assert response.headers["server"] == "cf-image-bot", path


async def test_a_client_that_disconnects_mid_body_is_one_info_line(
    serve: Callable[..., Any], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    async with serve() as served:
        _, token = await served.runtime.keys.create(user_id="u1", guild_id="", name="t")
        _, writer = await served.open()
        writer.write(
            post_head("/api/templates", token, JSON_TYPE, "Content-Length: 1000") + b'{"name": '
        )
        await writer.drain()
        await asyncio.sleep(0.3)  # the handler is reading the body now
        writer.close()
        for _ in range(200):
            if any("disconnected" in r.getMessage() for r in caplog.records):
                break
            await asyncio.sleep(0.05)
    lines = [r for r in caplog.records if "disconnected" in r.getMessage()]
    assert len(lines) == 1
    assert lines[0].levelno == logging.INFO
    assert lines[0].exc_info is None
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


@pytest.mark.parametrize(
    ("host", "loud"),
    [("0.0.0.0", True), ("192.0.2.10", True), ("::", True), ("example.org", True),  # noqa: S104
     ("127.0.0.1", False), ("::1", False), ("localhost", False), ("127.0.0.2", False)],
)  # fmt: skip
def test_a_non_loopback_web_host_is_a_loud_warning(
    host: str, loud: bool, caplog: pytest.LogCaptureFixture
) -> None:
    warn_if_exposed(host)
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert bool(warnings) == loud
    if loud:
        assert host in warnings[0].getMessage()
