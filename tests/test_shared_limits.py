"""Limits shared by every process on one ledger, on SQLite and PostgreSQL: the per-key API rate
limit (two real ``serve`` processes), the anonymous placeholder quota (two runtimes) and the
Cloudflare account budget (three clients of the fake Cloudflare, which enforces the account
limit, each with a ledger connection of its own, as three processes have)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from bot.account_budget import SharedAccountBudget
from bot.cloudflare_api import CloudflareAPI, store_error
from bot.config import Settings
from bot.errors import BotError, QuotaExceeded, StoreError
from bot.ledger import Ledger
from bot.placeholders import PLACEHOLDER_USER
from bot.requests import GenerateRequest
from bot.runtime import open_runtime
from tests.conftest import FAKE_CF_TOKEN
from tests.fakes.cloudflare import FakeCloudflare
from tests.test_kill9 import ROOT, create_key, free_port, start_server

pytestmark = pytest.mark.both_ledgers


# -- the API rate limit, across two real processes ------------------------------------------


def serve_env(data: Path, port: int, ledger_url: str | None, per_minute: int) -> dict[str, str]:
    env = {
        "PATH": "/usr/bin:/bin", "HOME": str(data), "PYTHONPATH": str(ROOT),
        "DATA_DIR": str(data), "WEB_PORT": str(port), "MODERATION_MODEL": "off",
        "API_RATE_PER_MINUTE": str(per_minute),
    }  # fmt: skip
    if ledger_url:
        env["DATABASE_URL"] = ledger_url
    return env


async def test_exactly_n_requests_per_window_pass_whichever_process_gets_them(
    tmp_path: Path, ledger_url: str | None
) -> None:
    per_minute = 10
    data = tmp_path / "data"
    envs = [serve_env(data, free_port(), ledger_url, per_minute) for _ in range(2)]
    servers = [await start_server(env, tmp_path) for env in envs]
    bases = [f"http://127.0.0.1:{env['WEB_PORT']}" for env in envs]
    try:
        async with httpx.AsyncClient(timeout=60) as client:
            for _attempt in range(3):  # again with a new key if a minute began mid-test
                key = await create_key(envs[0], tmp_path)
                headers = {"Authorization": f"Bearer {key}"}
                minute = int(time.time()) // 60
                both = [client.get(f"{bases[n % 2]}/api/images", headers=headers)
                        for n in range(2 * per_minute)]  # fmt: skip
                answers = await asyncio.gather(*both)
                after = [await client.get(f"{base}/api/images", headers=headers) for base in bases]
                if int(time.time()) // 60 == minute:
                    break
            else:
                pytest.fail("three attempts each straddled a minute")
    finally:
        for server in servers:
            server.terminate()
            await server.wait()
    statuses = [a.status_code for a in answers]
    assert statuses.count(200) == per_minute and statuses.count(429) == per_minute
    for limited in [*after, *(a for a in answers if a.status_code == 429)]:
        assert limited.status_code == 429  # the N+1th, whichever process it reached
        assert limited.json()["error"] == "Too many requests"
        assert 1 <= int(limited.headers["Retry-After"]) <= 60


async def test_old_windows_are_deleted(ledger_location: Path | str) -> None:
    ledger = await Ledger.open(ledger_location)
    try:
        limits = ledger.limits
        assert [await limits.hit("k", 60, 2) for _ in range(3)] == [True, True, False]
        assert await limits.hit("k", 120, 2)  # a new window starts from nothing
        assert await limits.forget_windows(120) == 1
        count = await ledger.database.scalar("SELECT COUNT(*) FROM api_rate_windows")
        assert count == 1
    finally:
        await ledger.close()


# -- the placeholder quota, across two runtimes ---------------------------------------------


async def test_the_placeholder_quota_is_exact_across_two_runtimes(
    make_settings: Callable[..., Settings],
) -> None:
    settings = make_settings(PLACEHOLDER_DAILY_IMAGES=3)
    async with open_runtime(settings) as one, open_runtime(settings) as two:

        async def ask(n: int) -> str:
            runtime = (one, two)[n % 2]
            try:
                await runtime.placeholders.image_for(f"thing-{n}", f"thing {n}", redo_by=None)
                return "made"
            except QuotaExceeded:
                return "refused"

        outcomes = await asyncio.gather(*(ask(n) for n in range(10)))
        assert outcomes.count("made") == 3 and outcomes.count("refused") == 7
        assert (await one.ledger.user_usage(PLACEHOLDER_USER)).images == 3
        assert await two.ledger.audit() == {"counter_mismatches": 0, "open_jobs": 0}


# -- the Cloudflare account budget, across three clients ------------------------------------

LIMIT, WINDOW = 12, 1.0


class Client:
    """One 'process': its own ledger connection, account budget and Cloudflare client."""

    def __init__(self, ledger: Ledger, http: httpx.AsyncClient, fake: FakeCloudflare) -> None:
        self.ledger = ledger
        self.waits: list[float] = []
        self.budget = SharedAccountBudget(
            ledger.limits, LIMIT, WINDOW, block=4, use_seconds=0.2, call_seconds=1.0
        )

        async def sleep(seconds: float) -> None:
            self.waits.append(seconds)
            await asyncio.sleep(seconds)

        self.api = CloudflareAPI(
            http, account_id=fake.account_id, api_token=FAKE_CF_TOKEN, base_url=fake.api_base,
            account_requests=LIMIT, account_window_seconds=WINDOW, account_budget=self.budget,
            sleep=sleep, backoff_base=0.05,
        )  # fmt: skip

    async def call(self, **options: Any) -> int:
        response = await self.api.request(
            "GET", "/images/v1/stats", expect="json", errors=store_error, **options
        )
        return response.status_code


Clients = tuple[FakeCloudflare, list[Client]]


@pytest.fixture
async def clients(ledger_location: Path | str) -> AsyncIterator[Clients]:
    async with FakeCloudflare(api_token=FAKE_CF_TOKEN) as fake, httpx.AsyncClient() as http:
        fake.account_limit, fake.account_window = LIMIT, WINDOW
        ledgers = [await Ledger.open(ledger_location, instance_id=f"p{n}") for n in range(3)]
        made = [Client(ledger, http, fake) for ledger in ledgers]
        try:
            yield fake, made
        finally:
            for client in made:
                await client.budget.close()
                await client.ledger.close()


async def test_three_processes_never_take_the_account_over_its_limit(
    clients: Clients,
) -> None:
    fake, made = clients
    calls = [made[n % 3].call() for n in range(45)]  # almost four windows' worth
    assert await asyncio.gather(*calls) == [200] * 45
    assert fake.account_429s == 0  # the fake blocks the account at the 13th in any window
    assert fake.api_requests == 45
    assert all(client.budget.blocks_taken >= 1 for client in made)  # each took its share
    assert sum(client.budget.blocks_taken for client in made) < 45 / 2  # a write per block


async def test_a_call_is_cut_off_when_its_grant_no_longer_covers_it(
    clients: Clients,
) -> None:
    """A grant counts a window past ``use_seconds + call_seconds`` only: a slower answer would
    be outside it, so the call is given up (a timeout) at its grant's deadline."""
    fake, (client, *_) = clients
    fake.store_latency = 10.0
    with pytest.raises(StoreError):
        await client.call(attempts=1)
    assert fake.api_requests == 0  # the fake was still holding it (its latency comes first)


async def test_a_pause_seen_by_one_process_reaches_the_others(
    clients: Clients,
) -> None:
    fake, (first, second, third) = clients
    assert await second.call() == 200  # the second holds a block already
    fake.inject("429", path_contains="/images/v1/stats", retry_after=3.0)
    with pytest.raises(BotError):
        await first.call(attempts=1)  # Cloudflare blocked the account: paused for 3 s here
    for _ in range(500):  # the pause is shared in the background
        if await first.ledger.limits.paused_until() > first.ledger.limits.now_ms():
            break
        await asyncio.sleep(0.01)
    else:
        raise AssertionError("the pause never reached the ledger")

    await second.budget.refresh()  # its lease renewal reads the shared pause
    assert second.api.account.paused_for > 1.0
    # the second has slots in hand; the third has no block yet, and taking one finds the pause
    assert await asyncio.gather(second.call(), third.call()) == [200, 200]
    assert max(second.waits) > 1.0 and max(third.waits) > 1.0  # each next call waited
    assert fake.account_429s == 0  # no call reached the blocked account (the fault is fake's)


async def test_a_grant_is_smaller_when_the_budget_is_short_and_none_when_spent(
    ledger_location: Path | str,
) -> None:
    ledger = await Ledger.open(ledger_location)
    try:
        limits = ledger.limits
        now = limits.now_ms()
        assert [await limits.grant(16, 40, 10_000, now) for _ in range(3)][:2] == [16, 16]
        assert await limits.live_slots(now) == 40  # the third got the 8 left
        refused = await limits.grant(16, 40, 10_000, now)
        assert not isinstance(refused, int) and refused.next_expiry_ms == now + 10_000
        assert await limits.grant(16, 40, 10_000, now + 10_000) == 16  # the first ones expired
        await limits.pause(now + 20_000)
        paused = await limits.grant(16, 40, 10_000, now + 10_001)
        assert not isinstance(paused, int) and paused.paused_until_ms == now + 20_000
        assert await limits.forget_grants(now + 10_000) == 3
    finally:
        await ledger.close()


async def test_the_runtime_takes_grants_on_cloudflare_and_none_on_the_local_backend(
    make_settings: Callable[..., Settings], cloudflare_env: dict[str, str]
) -> None:
    async def generate_and_count_grants(settings: Settings) -> int:
        async with open_runtime(settings) as runtime:
            request = GenerateRequest(prompt="a lighthouse at dusk", user_id="u1", fresh=True)
            assert (await runtime.service.generate(request)).images
            return await runtime.ledger.database.scalar("SELECT COUNT(*) FROM cloudflare_grants")

    assert await generate_and_count_grants(make_settings()) == 0  # no Cloudflare, no traffic
    assert await generate_and_count_grants(make_settings(**cloudflare_env)) >= 1


async def test_the_next_block_is_fetched_when_half_of_one_is_used(
    ledger_location: Path | str,
) -> None:
    ledger = await Ledger.open(ledger_location)
    budget = SharedAccountBudget(ledger.limits, 100, 60.0, block=4)
    try:
        deadlines = [(await budget.take()).deadline for _ in range(2)]
        assert budget.blocks_taken == 1 and None not in deadlines  # one grant for both
        for _ in range(500):  # half used: the next block comes in the background
            if budget.blocks_taken == 2:
                break
            await asyncio.sleep(0.01)
        assert budget.blocks_taken == 2
        more = [(await budget.take()).deadline for _ in range(3)]  # the first block's last 2
        assert None not in more and budget.blocks_taken == 2  # and one of the next: no wait
        assert await ledger.limits.live_slots() == 8
    finally:
        await budget.close()
        await ledger.close()
