"""Everything the bot sends to, or fetches from, an address a user gave it, made safe.

``check_url`` is the gate: https only, no credentials in the URL, and every address the host
resolves to must be publicly routable (no loopback, private ranges, link-local / cloud
metadata, CGNAT, multicast, reserved…). ``fetch_bytes`` downloads a user-supplied URL with a
size cap, a total time limit and manually followed, re-checked redirects. ``deliver_webhook``
POSTs a signed JSON body with bounded retries. ``allow_private`` (which also permits plain
``http://``) exists for tests and local development only.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import ipaddress
import json
import logging
import socket
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import httpx

from bot.errors import InvalidRequest
from bot.http_headers import full_jitter, media_type, retry_after_seconds
from bot.validation import format_megabytes

log = logging.getLogger(__name__)

SIGNATURE_HEADER = "X-Signature-256"
DELIVERY_ID_HEADER = "X-Webhook-Id"
WEBHOOK_USER_AGENT = "cf-image-bot-webhooks"
FETCH_USER_AGENT = "cf-image-bot"
RESOLVE_TIMEOUT = 5.0  # seconds allowed for resolving a host name

ONLY_HTTPS = "Only https:// URLs are accepted."
PRIVATE_ADDRESS = "That address is private or local and cannot be used."
UNRESOLVABLE = "That host name could not be resolved."

_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")
_DEFAULT_PORTS = {"https": 443, "http": 80}

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
Sleep = Callable[[float], Awaitable[object]]


class UnsafeURL(InvalidRequest):
    """A URL the bot refuses to contact: bad scheme, credentials, or a non-public address."""

    code = "unsafe_url"

    def __init__(self, message: str, field: str = "url", **details: Any) -> None:
        super().__init__(field, message, **details)


# --------------------------------------------------------------------------- address policy


def _embedded_ipv4(ip: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 address stands for (mapped, NAT64 well-known prefix, 6to4)."""
    if ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    if ip in _NAT64:
        return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    return ip.sixtofour


def is_public_address(ip: IPAddress) -> bool:
    """True if ``ip`` is globally routable unicast (judging embedded IPv4 by its own rules)."""
    if isinstance(ip, ipaddress.IPv6Address):
        inner = _embedded_ipv4(ip)
        if inner is not None:
            return is_public_address(inner)
        if ip.is_site_local:
            return False
    return ip.is_global and not (
        ip.is_private
        or ip.is_loopback
        or ip.is_link_local
        or ip.is_multicast
        or ip.is_reserved
        or ip.is_unspecified
    )


async def _resolve(host: str, port: int) -> list[str]:
    """Every address ``host`` resolves to (IP literals in any form included), as strings."""
    loop = asyncio.get_running_loop()
    infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return [str(info[4][0]) for info in infos]


async def check_url(url: str, *, allow_private: bool = False, field: str = "url") -> None:
    """Raise ``UnsafeURL`` unless ``url`` is an https URL whose host resolves only to public
    addresses. ``allow_private`` also permits ``http://`` and local addresses (tests, dev)."""
    try:
        parsed = httpx.URL(url)
        authority = urlsplit(url).netloc
    except (httpx.InvalidURL, TypeError, ValueError):
        raise UnsafeURL("That is not a valid URL.", field) from None
    allowed_schemes = ("https", "http") if allow_private else ("https",)
    if parsed.scheme not in allowed_schemes:
        raise UnsafeURL(ONLY_HTTPS, field)
    if parsed.userinfo or "@" in authority:  # even an empty "user@" part is refused
        raise UnsafeURL("URLs with a user name or password are not accepted.", field)
    host = parsed.raw_host.decode("ascii", "replace")
    if not host:
        raise UnsafeURL("That URL has no host.", field)
    port = parsed.port
    if port is not None and not 0 < port < 65536:
        raise UnsafeURL("That URL has an invalid port.", field)
    try:
        async with asyncio.timeout(RESOLVE_TIMEOUT):
            addresses = await _resolve(host, port or _DEFAULT_PORTS[parsed.scheme])
    except (OSError, UnicodeError, ValueError, TimeoutError):
        raise UnsafeURL(UNRESOLVABLE, field) from None
    if not addresses:
        raise UnsafeURL(UNRESOLVABLE, field)
    if allow_private:
        return
    for address in addresses:
        try:
            ip = ipaddress.ip_address(address.split("%", 1)[0])
        except ValueError:
            raise UnsafeURL(PRIVATE_ADDRESS, field) from None
        if not is_public_address(ip):
            raise UnsafeURL(PRIVATE_ADDRESS, field)


# --------------------------------------------------------------------------- fetching


def _too_large(max_bytes: int) -> InvalidRequest:
    return InvalidRequest(
        "url",
        f"The file at that URL is larger than {format_megabytes(max_bytes)}.",
        limit=max_bytes,
    )


async def fetch_bytes(
    http: httpx.AsyncClient,
    url: str,
    *,
    max_bytes: int,
    timeout: float = 15.0,  # noqa: ASYNC109 - the API bounds the whole fetch itself
    allow_private: bool = False,
    max_redirects: int = 3,
) -> tuple[bytes, str]:
    """Download a user-supplied URL: ``(body, media type)``, e.g. ``(b"...", "image/png")``.

    Every hop (the URL and each redirect, at most ``max_redirects``) passes ``check_url``;
    the body is streamed and abandoned as soon as it exceeds ``max_bytes``; the whole operation
    is bounded by ``timeout``. Failures are ``InvalidRequest`` on field ``"url"``.

    Residual risk: the host is resolved by ``check_url`` and again by the HTTP client when it
    connects, so a DNS server that answers differently within that short window (DNS rebinding)
    could still steer the connection to a private address. Closing it fully needs connecting to
    the checked IP (or an egress proxy/firewall that blocks private ranges).
    """
    try:
        async with asyncio.timeout(timeout):
            return await _fetch(http, url, max_bytes, allow_private, max_redirects)
    except (TimeoutError, httpx.TimeoutException):
        raise InvalidRequest("url", "The URL took too long to answer.") from None
    except (httpx.TransportError, httpx.InvalidURL, httpx.StreamError):
        raise InvalidRequest("url", "The file at that URL could not be fetched.") from None


async def _fetch(
    http: httpx.AsyncClient, url: str, max_bytes: int, allow_private: bool, max_redirects: int
) -> tuple[bytes, str]:
    headers = {"User-Agent": FETCH_USER_AGENT, "Accept-Encoding": "identity"}
    await check_url(url, allow_private=allow_private)
    current = httpx.URL(url)
    redirects = 0
    while True:
        async with http.stream("GET", current, headers=headers, follow_redirects=False) as resp:
            if resp.has_redirect_location:
                redirects += 1
                if redirects > max_redirects:
                    raise InvalidRequest("url", "That URL redirected too many times.")
                current = current.join(resp.headers["location"])
                await check_url(str(current), allow_private=allow_private)
                continue
            if not resp.is_success:
                raise InvalidRequest(
                    "url",
                    f"The URL answered with HTTP {resp.status_code}.",
                    status=resp.status_code,
                )
            declared = resp.headers.get("content-length", "")
            if declared.isdigit() and int(declared) > max_bytes:
                raise _too_large(max_bytes)
            body = bytearray()
            async for chunk in resp.aiter_bytes():
                body += chunk
                if len(body) > max_bytes:
                    raise _too_large(max_bytes)
            return bytes(body), media_type(resp.headers.get("content-type", ""))


# --------------------------------------------------------------------------- webhooks


def sign(secret: str, body: bytes) -> str:
    """Hex HMAC-SHA256 of the raw ``body`` keyed by the UTF-8 ``secret``."""
    return hmac.new(secret.encode("utf-8"), body, hashlib.sha256).hexdigest()


@dataclass
class Delivery:
    """The outcome of ``deliver_webhook``: ``attempts`` counts requests actually sent."""

    delivered: bool
    attempts: int
    status: int | None
    error: str | None


def _retryable(status: int) -> bool:
    return status in (408, 429) or status >= 500


async def deliver_webhook(
    http: httpx.AsyncClient,
    url: str,
    payload: Mapping[str, Any],
    secret: str,
    *,
    delivery_id: str,
    attempts: int = 5,
    backoff_base: float = 1.0,
    backoff_max: float = 60.0,
    timeout: float = 10.0,  # noqa: ASYNC109 - per-attempt bound
    allow_private: bool = False,
    sleep: Sleep = asyncio.sleep,
) -> Delivery:
    """POST ``payload`` as compact, key-sorted JSON signed with ``secret``; never raises.

    Headers: ``X-Signature-256: sha256=<hex HMAC of the raw body>``, ``X-Webhook-Id``,
    ``User-Agent: cf-image-bot-webhooks``. A 2xx delivers. Connection errors, timeouts, 408,
    429 (``Retry-After`` honoured, capped at ``backoff_max``) and 5xx are retried up to
    ``attempts`` requests with full-jitter exponential backoff; any other status gives up at
    once. Redirects are not followed. ``check_url`` runs before every attempt, so a host that
    starts resolving to a private address is refused without a request. Same DNS-rebinding
    caveat as ``fetch_bytes``.
    """
    body = json.dumps(payload, separators=(",", ":"), sort_keys=True).encode("utf-8")
    headers = {
        "Content-Type": "application/json",
        SIGNATURE_HEADER: "sha256=" + sign(secret, body),
        DELIVERY_ID_HEADER: delivery_id,
        "User-Agent": WEBHOOK_USER_AGENT,
    }
    host = _host_for_log(url)
    sent = 0
    status: int | None = None
    error: str | None = None
    for attempt in range(1, attempts + 1):
        try:
            await check_url(url, allow_private=allow_private)
        except UnsafeURL as exc:
            log.info("webhook %s to %s refused: %s", delivery_id, host, exc.user_message)
            return Delivery(False, sent, status, exc.user_message)
        retry_after: float | None = None
        sent += 1
        try:
            async with (
                asyncio.timeout(timeout),
                http.stream(
                    "POST", url, content=body, headers=headers, follow_redirects=False
                ) as response,
            ):
                status = response.status_code
                if response.is_success:
                    return Delivery(True, sent, status, None)
                error = f"The receiver answered HTTP {status}."
                if status == 429 or status == 503:
                    retry_after = retry_after_seconds(response)
        except (TimeoutError, httpx.TimeoutException):
            status, error = None, "The receiver took too long to answer."
        except httpx.TransportError:
            status, error = None, "The receiver could not be reached."
        log.info(
            "webhook %s to %s attempt %d/%d failed: status=%s %s",
            delivery_id,
            host,
            attempt,
            attempts,
            status,
            error,
        )
        if status is not None and not _retryable(status):
            return Delivery(False, sent, status, error)
        if attempt < attempts:
            if retry_after is not None:
                delay = min(retry_after, backoff_max)
            else:
                delay = full_jitter(attempt, backoff_base, backoff_max)
            await sleep(delay)
    return Delivery(False, sent, status, f"Gave up after {sent} attempts. {error or ''}".strip())


def _host_for_log(url: str) -> str:
    """Only the host: webhook URLs often carry a token in the path or query."""
    try:
        return httpx.URL(url).host or "?"
    except (httpx.InvalidURL, TypeError, ValueError):
        return "?"
