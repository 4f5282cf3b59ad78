"""A rate limit per client address for anonymous requests (images and placeholders).

The address is the peer's, or, when the peer is a trusted reverse proxy (WEB_TRUSTED_PROXIES),
the nearest address in ``X-Forwarded-For`` that is not a trusted proxy; a client cannot choose
its own address by sending the header straight to the server.

A token bucket per address: a burst of ``per_minute`` requests (a page full of thumbnails),
then ``per_minute`` a minute. Two numbers per address, at most ``max_addresses`` addresses
(least recently seen out first), so a stranger with many addresses cannot grow it.
"""

from __future__ import annotations

import math
import time
from collections import OrderedDict

from aiohttp import web

from bot.api_keys import ApiKeys
from bot.runtime import Runtime
from bot.web.http import RateLimited

RUNTIME_KEY = web.AppKey("runtime", Runtime)


def client_address(request: web.Request, trusted_proxies: frozenset[str]) -> str:
    """Who sent the request, as far as can be trusted."""
    peer = request.remote or "unknown"
    if peer not in trusted_proxies:
        return peer
    forwarded = ",".join(request.headers.getall("X-Forwarded-For", []))
    hops = [hop.strip() for hop in forwarded.split(",") if hop.strip()]
    for hop in reversed(hops):  # the proxy appends: the last untrusted hop is the client
        if hop not in trusted_proxies:
            return hop
    return peer


class AddressRateLimiter:
    def __init__(self, per_minute: int, max_addresses: int = 10_000) -> None:
        self.per_minute = per_minute
        self.max_addresses = max_addresses
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()  # tokens, when

    def check(self, address: str) -> None:
        """Spend one token for ``address``, or raise RateLimited with the wait in seconds."""
        now = time.monotonic()
        rate = self.per_minute / 60.0
        tokens, then = self._buckets.pop(address, (float(self.per_minute), now))
        tokens = min(float(self.per_minute), tokens + (now - then) * rate)
        if tokens < 1.0:
            self._buckets[address] = (tokens, now)
            raise RateLimited(
                max(1, math.ceil((1.0 - tokens) / rate)),
                "Too many image requests from this address",
            )
        self._buckets[address] = (tokens - 1.0, now)
        if len(self._buckets) > self.max_addresses:
            self._buckets.popitem(last=False)


ANONYMOUS_LIMITER = web.AppKey("anonymous_limiter", AddressRateLimiter)


def check_anonymous_rate(request: web.Request) -> None:
    """Anonymous image and placeholder requests: a rate limit per client address (429)."""
    trusted = request.app[RUNTIME_KEY].settings.web_trusted_proxies
    request.app[ANONYMOUS_LIMITER].check(client_address(request, trusted))


class KeyRateLimiter:
    """At most API_RATE_PER_MINUTE requests per API key in each fixed minute, counted in the
    ledger (``ApiKeys.rate_wait``), so every process behind a load balancer shares one count."""

    def __init__(self, keys: ApiKeys) -> None:
        self.keys = keys

    async def check(self, key_id: str) -> None:
        wait = await self.keys.rate_wait(key_id)
        if wait is not None:
            raise RateLimited(wait)
