"""The HTTP/1.1 server under the app: time and size limits aiohttp does not have, JSON errors
even from the HTTP parser, and a ``Server`` header that names no version.

aiohttp's ``RequestHandler`` (one per connection) has a keep-alive timeout but no header or body
timeout, and ``client_max_size`` only covers ``request.read()``/``post()``, not a multipart body
read part by part. ``GuardedRequestHandler`` adds, per connection:

- a **header clock**: bytes of a request line or headers that do not make a complete request
  within ``header_timeout`` seconds get a 408 and the connection is closed (slowloris);
- a **body clock**: a body not complete ``body_timeout`` seconds after its headers fails the
  handler's read with a 408 (``RequestTimeout``), then the connection closes;
- a **size cap** over the whole body, every multipart part counted: a declared
  ``Content-Length`` beyond it is a 413 before a byte of body is read; a chunked body that grows
  beyond it fails the handler's read with a 413 (``PayloadTooLarge``).

It reaches into aiohttp's parser plumbing in three places (``_messages``, ``_ErrInfo``,
``_lingering_time``), all in this module, checked by tests/test_web_limits.py.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import logging
from http import HTTPStatus
from typing import Any

from aiohttp import web
from aiohttp.http_exceptions import LineTooLong
from aiohttp.streams import EMPTY_PAYLOAD, StreamReader
from aiohttp.web_protocol import RequestHandler, _ErrInfo
from aiohttp.web_request import BaseRequest

from bot.config import Settings
from bot.errors import BotError
from bot.web.http import PayloadTooLarge, RequestTimeout, error_response

log = logging.getLogger(__name__)

SERVER_NAME = "cf-image-bot"
LINGER_SECONDS = 2.0  # reading (and dropping) an unread body after the answer, at most


def _raw_error(status: int, message: str) -> bytes:
    """A complete HTTP/1.1 error response, for answering outside any request handler."""
    body = json.dumps({"error": HTTPStatus(status).phrase, "details": {"message": message}})
    head = (
        f"HTTP/1.1 {status} {HTTPStatus(status).phrase}\r\nServer: {SERVER_NAME}\r\n"
        "Content-Type: application/json\r\nConnection: close\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    )
    return head.encode("ascii") + body.encode("ascii")


class GuardedRequestHandler(RequestHandler):
    """aiohttp's connection handler with header/body clocks and a body-size cap (see above)."""

    def __init__(
        self,
        manager: web.Server,
        *,
        header_timeout: float,
        body_timeout: float,
        max_body_bytes: int,
        **kwargs: Any,
    ) -> None:
        super().__init__(manager, lingering_time=LINGER_SECONDS, **kwargs)
        self.header_timeout = header_timeout
        self.body_timeout = body_timeout
        self.max_body_bytes = max_body_bytes
        self._header_clock: asyncio.TimerHandle | None = None
        self._body_clock: asyncio.TimerHandle | None = None
        self._body: StreamReader | None = None  # the body being received, if any

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self._start_header_clock()  # a connection that never completes a request is cut off

    def connection_lost(self, exc: BaseException | None) -> None:
        self._stop_clocks()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        before = self._request_count
        super().data_received(data)
        completed = self._request_count - before
        if completed:
            self._stop_header_clock()
            self._check_new_requests(completed)
        elif data and self._body is None:
            self._start_header_clock()
        body = self._body
        if body is not None:
            if body.is_eof():
                self._end_body()
            elif body.total_bytes > self.max_body_bytes:
                self._fail_body(PayloadTooLarge(self._too_large_message()))

    # -- requests whose headers just completed ------------------------------------------------

    def _check_new_requests(self, count: int) -> None:
        first = len(self._messages) - count
        for index in range(max(first, 0), len(self._messages)):
            message, payload = self._messages[index]
            if isinstance(message, _ErrInfo):
                continue
            declared = message.headers.get("Content-Length", "")
            if declared.isdigit() and int(declared) > self.max_body_bytes:
                # Answered like a parse error: by handle_error, without reading the body.
                refusal = PayloadTooLarge(self._too_large_message())
                self._messages[index] = (
                    _ErrInfo(status=413, exc=refusal, message=refusal.user_message),
                    EMPTY_PAYLOAD,
                )
            elif payload is not EMPTY_PAYLOAD and not payload.is_eof():
                self._start_body(payload)

    def _too_large_message(self) -> str:
        return f"The request body is larger than {self.max_body_bytes // (1024 * 1024)} MB."

    # -- clocks -------------------------------------------------------------------------------

    def _start_header_clock(self) -> None:
        if self._header_clock is None and not self._force_close:
            self._header_clock = self._loop.call_later(self.header_timeout, self._headers_late)

    def _stop_header_clock(self) -> None:
        if self._header_clock is not None:
            self._header_clock.cancel()
            self._header_clock = None

    def _start_body(self, payload: StreamReader) -> None:
        self._end_body()
        self._body = payload
        self._body_clock = self._loop.call_later(self.body_timeout, self._body_late)

    def _end_body(self) -> None:
        self._body = None
        if self._body_clock is not None:
            self._body_clock.cancel()
            self._body_clock = None

    def _stop_clocks(self) -> None:
        self._stop_header_clock()
        self._end_body()

    def _headers_late(self) -> None:
        self._header_clock = None
        if self._waiter is None or self._waiter.done():
            return  # a request is being handled: its own clocks apply
        log.info("closed a connection from %s: no complete request headers within %g s",
                 self._peer(), self.header_timeout)  # fmt: skip
        if self.transport is not None:
            self.transport.write(_raw_error(408, "The request headers took too long."))
        self.force_close()

    def _body_late(self) -> None:
        self._body_clock = None
        if self._body is not None and not self._body.is_eof():
            log.info("refused a request from %s: its body did not arrive within %g s",
                     self._peer(), self.body_timeout)  # fmt: skip
            self._fail_body(RequestTimeout("The request body took too long to arrive."))

    def _fail_body(self, error: BotError) -> None:
        """The handler's next read raises ``error`` (a JSON answer); the connection then closes."""
        body = self._body
        self._end_body()
        self._lingering_time = 0.0  # nothing more is read from this connection
        self.close()
        if body is not None and self._current_request is not None:
            body.set_exception(error)
        else:  # nobody is reading it (the answer went out already): just hang up
            self.force_close()

    def _peer(self) -> str:
        peer = self.peername
        return str(peer[0]) if isinstance(peer, tuple) else "a client"

    # -- errors before any handler ------------------------------------------------------------

    def handle_error(
        self,
        request: BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        """Parser errors and refusals as the JSON error shape, logged as one INFO line."""
        if status >= 500:
            log.error("error handling a request from %s", request.remote, exc_info=exc)
            text = "The server could not answer this request."
        elif isinstance(exc, BotError):
            text = exc.user_message
        elif isinstance(exc, LineTooLong):
            text = "The request line or a header is too long."
        else:
            text = "The request is not valid HTTP/1.1."
        if status < 500:
            log.info("refused a request from %s: %d %s", request.remote, status,
                     type(exc).__name__ if exc else "")  # fmt: skip
        if request.writer.output_size > 0:
            raise ConnectionError("the response has already started")
        response = error_response(status, HTTPStatus(status).phrase, {"message": text})
        response.headers["Server"] = SERVER_NAME
        response.force_close()
        return response


class GuardedServer(web.Server):
    """aiohttp's Server, making a GuardedRequestHandler for each connection."""

    def __call__(self) -> RequestHandler:
        return GuardedRequestHandler(self, loop=self._loop, **self._kwargs)


class GuardedAppRunner(web.AppRunner):
    """An AppRunner whose server guards every connection with the limits in ``settings``."""

    def __init__(self, app: web.Application, settings: Settings) -> None:
        super().__init__(
            app,
            access_log=None,
            keepalive_timeout=float(settings.web_keepalive_seconds),
            header_timeout=float(settings.web_header_timeout_seconds),
            body_timeout=float(settings.web_body_timeout_seconds),
            max_body_bytes=settings.web_max_request_mb * 1024 * 1024,
        )

    async def _make_server(self) -> web.Server:
        plain = await super()._make_server()  # runs the app's start-up and freezes it
        return GuardedServer(
            plain.request_handler,
            request_factory=plain.request_factory,
            handler_cancellation=plain.handler_cancellation,
            loop=asyncio.get_running_loop(),
            **plain._kwargs,
        )


async def name_the_server(request: web.Request, response: web.StreamResponse) -> None:
    """on_response_prepare: ``Server: cf-image-bot``, no framework or version."""
    response.headers["Server"] = SERVER_NAME


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def warn_if_exposed(host: str) -> None:
    """A loud start-up warning when the server listens beyond this machine."""
    if not is_loopback(host):
        log.warning(
            "WEB_HOST=%s: the web server is reachable from other machines. Anyone who can "
            "reach it can fetch and resize images and call the API with a key; put it behind "
            "a reverse proxy with TLS, and see the README's 'Exposing the web server'.",
            host,
        )
