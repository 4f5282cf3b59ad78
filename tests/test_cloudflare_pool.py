"""CloudflareAPI hands httpx at most its pool's size of calls at once (the rest wait in
CloudflareAPI, where waiting costs nothing; queued inside httpcore, each pool change re-scans
every waiting request), and every call still completes; and the bot's pool keeps every
connection open (httpcore closes idle ones above max_keepalive_connections)."""

from __future__ import annotations

import asyncio

import httpx

from bot.cloudflare_api import CloudflareAPI
from bot.runtime import HTTP_LIMITS
from tests.fakes.cloudflare import FakeCloudflare

TOKEN = "cfut_pool-test-token"
SDXL = "@cf/stabilityai/stable-diffusion-xl-base-1.0"


class CountingTransport(httpx.AsyncBaseTransport):
    """The real transport, counting how many requests it holds at once (queued in httpcore's
    pool or on a connection) and how many connections the server saw opened."""

    def __init__(self, limits: httpx.Limits) -> None:
        self.inner = httpx.AsyncHTTPTransport(limits=limits)
        self.now = self.most = 0

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        self.now += 1
        self.most = max(self.most, self.now)
        try:
            response = await self.inner.handle_async_request(request)
            await response.aread()
            return response
        finally:
            self.now -= 1

    async def aclose(self) -> None:
        await self.inner.aclose()


async def test_no_more_calls_reach_httpx_than_the_pool_holds() -> None:
    limits = httpx.Limits(max_connections=3, max_keepalive_connections=3)
    transport = CountingTransport(limits)
    async with FakeCloudflare(api_token=TOKEN) as fake, httpx.AsyncClient(
        transport=transport
    ) as http:
        fake.latency = 0.02  # calls overlap
        api = CloudflareAPI(http, account_id=fake.account_id, api_token=TOKEN,
                            base_url=fake.api_base, max_connections=3)  # fmt: skip
        body = {"prompt": "a fox", "num_steps": 4}
        responses = await asyncio.gather(
            *(api.request("POST", f"/ai/run/{SDXL}", json=body) for _ in range(20))
        )
    assert all(r.status_code == 200 for r in responses)
    assert len(fake.ai_requests()) == 20
    assert transport.most == 3  # without the semaphore: 20 (17 queued inside httpcore)


def test_the_bots_pool_keeps_every_connection_alive() -> None:
    assert HTTP_LIMITS.max_keepalive_connections == HTTP_LIMITS.max_connections
