"""GET /metrics and /healthz (issue 10, item 6): the Prometheus text parses, and its counters
move when jobs run (through the HTTP API on the fake Cloudflare, and through Discord); /healthz
is 200 when ready and 503 naming the check when the schema is behind or the database is gone."""

from __future__ import annotations

import asyncio
import sqlite3
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from bot.discord_bot import ImageBot
from bot.ledger.migrations import MIGRATIONS
from bot.metrics import Metrics
from bot.providers.base import GeneratedImage, ImageRequest
from bot.providers.local import LocalProvider
from bot.requests import GenerateRequest
from bot.runtime import open_runtime
from tests.conftest import SECRETS, CountingProvider
from tests.test_api import ApiClient, start_api  # noqa: F401 (the fixture)

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def parse(text: str) -> Samples:
    """Every sample by (name, labels); parsing fails on anything not in the text format."""
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


async def scrape(api: ApiClient) -> Samples:
    response = await api.http.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
    assert not any(secret in response.text for secret in SECRETS)
    return parse(response.text)


async def test_metrics_move_when_a_job_runs_on_cloudflare(start_api, cloudflare_env,  # noqa: F811
                                                          fake_cloudflare):  # fmt: skip
    api = await start_api(**cloudflare_env)
    before = await scrape(api)
    assert value(before, "imagebot_jobs", state="settled") == 0
    fake_cloudflare.inject("500", times=1)  # the first ai/run attempt fails and is retried
    made = await api.post("/api/generate", {"prompt": "a lighthouse at dusk"})
    assert made.status_code == 201
    after = await scrape(api)

    assert value(after, "imagebot_jobs", state="settled") == 1
    assert value(after, "imagebot_jobs", state="reserved") == 0
    assert value(after, "imagebot_deliveries_total", route="api") == 1
    responses = "imagebot_cloudflare_responses_total"
    assert value(after, responses, kind="generation", status="500") == 1
    assert value(after, responses, kind="generation", status="200") == 1
    assert value(after, responses, kind="storage", status="200") >= 1
    generate = {"backend": "provider", "operation": "generate", "outcome": "ok"}
    assert value(after, "imagebot_backend_seconds_count", **generate) == 1
    assert value(after, "imagebot_backend_seconds_sum", **generate) > 0
    put = {"backend": "store", "operation": "put", "outcome": "ok"}
    assert value(after, "imagebot_backend_seconds_count", **put) == 1
    waits = "imagebot_cloudflare_limiter_wait_seconds_count"
    assert value(after, waits, kind="generation") == 2  # both attempts took a limiter slot
    for kind in ("read", "write"):
        count = "imagebot_ledger_statement_seconds_count"
        assert value(after, count, kind=kind) > value(before, count, kind=kind)
    assert value(after, "imagebot_scheduler_jobs", status="running") == 0


async def test_a_failed_job_counts_as_refunded_and_its_calls_as_errors(
    start_api, cloudflare_env, fake_cloudflare  # noqa: F811
):
    api = await start_api(**cloudflare_env)
    fake_cloudflare.inject("400", times=1)  # not retryable: the job fails and is refunded
    assert (await api.post("/api/generate", {"prompt": "a failing boat"})).status_code >= 400
    after = await scrape(api)
    assert value(after, "imagebot_jobs", state="refunded") == 1
    assert value(after, "imagebot_cloudflare_responses_total", kind="generation",
                 status="400") == 1  # fmt: skip
    failed = {"backend": "provider", "operation": "generate", "outcome": "error"}
    assert value(after, "imagebot_backend_seconds_count", **failed) == 1


class GatedProvider(LocalProvider):
    """The local renderer, each call held until ``gate`` opens."""

    def __init__(self) -> None:
        self.gate = asyncio.Event()

    async def generate(self, request: ImageRequest) -> GeneratedImage:
        await self.gate.wait()
        return await super().generate(request)


async def test_queue_depth_is_read_from_the_scheduler(start_api):  # noqa: F811
    api = await start_api(MAX_CONCURRENT_JOBS=1)
    provider = GatedProvider()
    api.runtime.service.provider = provider
    scheduler = api.runtime.service.scheduler

    def start(prompt: str) -> asyncio.Task[Any]:
        request = GenerateRequest(prompt=prompt, user_id="7", model=None)
        return asyncio.create_task(api.runtime.service.generate(request))

    jobs = [start("first"), start("second")]
    try:
        for _ in range(1000):
            if (scheduler.running, scheduler.waiting) == (1, 1):
                break
            await asyncio.sleep(0.01)
        held = await scrape(api)
        assert value(held, "imagebot_scheduler_jobs", status="running") == 1
        assert value(held, "imagebot_scheduler_jobs", status="waiting") == 1
        assert value(held, "imagebot_jobs", state="reserved") == 2  # reserved before queueing
    finally:
        provider.gate.set()
        await asyncio.gather(*jobs)
    done = await scrape(api)
    assert value(done, "imagebot_scheduler_jobs", status="running") == 0
    assert value(done, "imagebot_jobs", state="settled") == 2


async def test_discord_429s_and_deliveries_by_route(fake_discord, bot_harness, make_settings):
    async with open_runtime(make_settings()) as runtime:
        runtime.service.provider = CountingProvider(delay=0.5)  # done before any progress edit
        await bot_harness.start(ImageBot(runtime))
        made = await fake_discord.slash("imagine", {"prompt": "a rate-limited sunset"})
        await made.wait_for_callback()
        fake_discord.force_429(1, retry_after=0.05)  # discord.py waits and retries once
        await made.wait_for_message(lambda m: bool(m.embeds))
        for _ in range(500):  # the delivery is recorded just after the message is sent
            samples = parse(runtime.metrics.exposition().decode())
            if value(samples, "imagebot_deliveries_total", route="interaction"):
                break
            await asyncio.sleep(0.01)
    assert value(samples, "imagebot_discord_rate_limited_total", scope="user") == 1
    assert fake_discord.rate_limited == 1
    for route in ("channel", "dm", "undelivered"):
        assert value(samples, "imagebot_deliveries_total", route=route) == 0


def test_every_runtime_has_its_own_registry() -> None:
    first, second = Metrics(), Metrics()
    first.deliveries.labels("api").inc()
    assert value(parse(second.exposition().decode()), "imagebot_deliveries_total",
                 route="api") == 0  # fmt: skip
    assert value(parse(first.exposition().decode()), "imagebot_deliveries_total",
                 route="api") == 1  # fmt: skip


# -- /healthz ---------------------------------------------------------------------------------


async def health(api: ApiClient) -> tuple[int, dict[str, Any]]:
    response = await api.http.get("/healthz")
    assert not any(secret in response.text for secret in SECRETS)
    assert str(api.runtime.settings.database_path) not in response.text
    return response.status_code, response.json()


async def test_healthz_is_ready_when_every_check_passes(start_api):  # noqa: F811
    status, body = await health(await start_api())
    assert status == 200
    assert body == {"status": "ok", "checks": dict.fromkeys(
        ("database", "migrations", "provider", "store"), "ok")}  # fmt: skip


async def test_healthz_is_503_when_the_schema_is_behind(start_api):  # noqa: F811
    api = await start_api()
    path = api.runtime.settings.database_path

    def roll_back() -> None:  # another tool (a restore) left the schema one version behind
        with sqlite3.connect(path) as other:
            other.execute(f"PRAGMA user_version = {len(MIGRATIONS) - 1}")

    await asyncio.to_thread(roll_back)
    status, body = await health(api)
    assert status == 503 and body["status"] == "degraded"
    assert body["checks"]["migrations"] == (
        f"The database schema is at version {len(MIGRATIONS) - 1}; this code expects "
        f"{len(MIGRATIONS)}."
    )
    assert body["checks"]["database"] == "ok"


async def test_healthz_is_503_when_the_database_is_gone(start_api):  # noqa: F811
    api = await start_api()
    await api.runtime.ledger.database.connection.close()  # the connection is lost
    status, body = await health(api)
    assert status == 503
    assert body["checks"]["database"] == "unavailable"
    assert body["checks"]["store"] == "ok"
    samples = await scrape(api)  # /metrics still answers, with the last known values
    assert value(samples, "imagebot_jobs", state="settled") == 0

