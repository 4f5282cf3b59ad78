"""The whole pipeline on the Cloudflare backends, against the fake Cloudflare over sockets:
generation, hosting on Images, retries, and a refund for every failure."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest

from bot.catalog import load_catalog
from bot.cloudflare_api import CloudflareAPI
from bot.errors import (
    ContentFlagged,
    DailyAllocationExhausted,
    PaidPlanRequired,
    ProviderAuthError,
    ProviderUnavailable,
    StoreError,
)
from bot.ledger import Ledger
from bot.providers.cloudflare import CloudflareProvider
from bot.public import image_to_public
from bot.requests import GenerateRequest
from bot.runtime import open_runtime
from bot.scheduler import JobScheduler
from bot.service import ImageService
from bot.stores.cloudflare import CloudflareImagesStore
from tests.conftest import FAKE_CF_TOKEN, FAKE_SIGNING_KEY, png
from tests.fakes.cloudflare import FakeCloudflare

SCHNELL = "@cf/black-forest-labs/flux-1-schnell"


async def no_wait(seconds: float) -> None:
    await asyncio.sleep(0)


@asynccontextmanager
async def cloudflare_service(
    tmp_path: Path,
    fake: FakeCloudflare,
    api_options: dict[str, Any] | None = None,
    **store_options: Any,
) -> AsyncIterator[ImageService]:
    """The real parts, with backoff sleeps skipped so fault tests stay fast."""
    async with httpx.AsyncClient(timeout=httpx.Timeout(2.0)) as http:
        options: dict[str, Any] = {"sleep": no_wait, "max_total_seconds": 10.0}
        options.update(api_options or {})
        api = CloudflareAPI(
            http,
            account_id=fake.account_id,
            api_token=FAKE_CF_TOKEN,
            base_url=fake.api_base,
            **options,
        )
        ledger = await Ledger.open(tmp_path / "ledger.sqlite3")
        try:
            yield ImageService(
                ledger=ledger,
                provider=CloudflareProvider(api),
                store=CloudflareImagesStore(
                    api,
                    account_hash=fake.account_hash,
                    delivery_url=fake.delivery_base,
                    **store_options,
                ),
                catalog=load_catalog(None),
                scheduler=JobScheduler(max_per_user=2, max_running=8, max_queue=500),
                default_model=SCHNELL,
                enhance_model="@cf/meta/llama-3.1-8b-instruct-fp8-fast",
            )
        finally:
            await ledger.close()


@pytest.fixture
async def service(tmp_path: Path, fake_cloudflare: FakeCloudflare) -> AsyncIterator[ImageService]:
    async with cloudflare_service(tmp_path, fake_cloudflare) as built:
        yield built


def ask(prompt: str = "a lighthouse at dusk", **fields: object) -> GenerateRequest:
    return GenerateRequest(prompt=prompt, user_id="u1", guild_id="g1", **fields)  # type: ignore[arg-type]


async def test_generated_image_is_hosted_on_images_and_served(service, fake_cloudflare):
    result = await service.generate(ask())
    [image] = result.images
    assert image.store == "cloudflare" and image.storage_key == image.id
    assert image.storage_key in fake_cloudflare.images
    hosted = fake_cloudflare.images[image.storage_key]
    assert hosted.metadata["image_id"] == image.id and hosted.metadata["user"] == "u1"
    assert image.url == (f"{fake_cloudflare.delivery_base}/{fake_cloudflare.account_hash}/"
                         f"{image.id}/public")  # fmt: skip
    async with httpx.AsyncClient() as client:
        served = await client.get(image.url)
    assert served.status_code == 200 and served.content == hosted.data
    assert image.content_type == "image/jpeg"  # schnell's envelope holds JPEG bytes
    assert image.cost_micro_usd == 634


async def test_the_users_metadata_is_hosted_with_the_image_exactly(service, fake_cloudflare):
    metadata = {"ref": "a-42", "batch_no": 7, "ok": False, "nested": {"tags": ["x", 2.5, None]}}
    [image] = (await service.generate(ask("a lighthouse in fog", metadata=metadata))).images
    assert image.metadata == metadata
    assert (await service.ledger.get_image(image.id)).metadata == metadata
    hosted = fake_cloudflare.images[image.storage_key].metadata
    assert hosted["metadata"] == metadata and hosted["image_id"] == image.id


async def test_transient_faults_are_retried_and_charged_once(service, fake_cloudflare):
    for kind in ("429", "500", "3040"):
        fake_cloudflare.inject(kind)
    result = await service.generate(ask(fresh=True))
    assert len(result.images) == 1
    assert fake_cloudflare.ai_calls == 4
    usage = await service.ledger.user_usage("u1", "g1")
    assert (usage.images, usage.micro_usd) == (1, 634)


@pytest.mark.parametrize(
    ("kind", "times", "error"),
    [
        ("3036", 1, DailyAllocationExhausted),
        ("3030", 2, ContentFlagged),
        ("401", 1, ProviderAuthError),
        ("5035", 1, PaidPlanRequired),
        ("5016", 1, PaidPlanRequired),
        ("500", 10, ProviderUnavailable),
        ("malformed", 10, ProviderUnavailable),
    ],
)
async def test_provider_failure_refunds_everything(service, fake_cloudflare, kind, times, error):
    fake_cloudflare.inject(kind, times=times)
    with pytest.raises(error) as raised:
        await service.generate(ask(fresh=True))
    assert "Traceback" not in raised.value.user_message
    assert FAKE_CF_TOKEN not in str(raised.value)
    usage = await service.ledger.user_usage("u1", "g1")
    assert (usage.images, usage.micro_usd, usage.milli_neurons) == (0, 0, 0)
    assert await service.ledger.audit() == {"counter_mismatches": 0, "open_jobs": 0}
    if kind == "3036":
        assert "00:00 UTC" in raised.value.user_message
        assert fake_cloudflare.ai_calls == 1
    if kind in ("5035", "5016"):  # not a bad token: its own code and message, not retried
        assert raised.value.code == "paid_plan_required"
        assert "Workers Paid plan" in raised.value.user_message
        assert "credentials" not in raised.value.user_message
        assert fake_cloudflare.ai_calls == 1


async def test_store_failure_refunds_and_leaves_no_record(service, fake_cloudflare):
    fake_cloudflare.inject("500", times=10, path_contains="/images/v1")
    with pytest.raises(StoreError):
        await service.generate(ask(fresh=True))
    assert await service.ledger.audit() == {"counter_mismatches": 0, "open_jobs": 0}
    assert (await service.ledger.user_usage("u1", "g1")).images == 0
    assert await service.ledger.list_images("u1") == []


async def test_partial_failure_of_a_batch_charges_only_what_was_made(service, fake_cloudflare):
    fake_cloudflare.inject("3036")  # the first of four calls fails for good, the rest succeed
    result = await service.generate(
        ask(model="@cf/stabilityai/stable-diffusion-xl-base-1.0", count=4, width=512, height=512,
            seed=1)
    )  # fmt: skip
    assert len(result.images) == 3 and result.failed == 1
    assert (await service.ledger.user_usage("u1", "g1")).images == 3


async def test_fault_storm_keeps_the_books_exact(service, fake_cloudflare):
    """30% faults of every kind across 60 requests: every success charged once, every failure
    refunded, no reservation left open."""
    fake_cloudflare.fault_rate = 0.3
    fake_cloudflare.fault_kinds = ("429", "500", "3040", "3030", "malformed", "not_image")
    outcomes = await asyncio.gather(
        *(service.generate(GenerateRequest(prompt=f"storm picture {i}", user_id=f"u{i % 6}",
                                           guild_id="g1")) for i in range(60)),
        return_exceptions=True,
    )  # fmt: skip
    made = [o for o in outcomes if not isinstance(o, BaseException)]
    unexpected = [o for o in outcomes if isinstance(o, BaseException)
                  and not isinstance(o, (ProviderUnavailable, ContentFlagged))
                  and type(o).__name__ != "ProviderError"]  # fmt: skip
    assert not unexpected
    report = await service.ledger.report(service.ledger.today(), service.ledger.today())
    assert report.total_images == len(made) == sum(len(o.images) for o in made)
    assert report.total_micro_usd == sum(i.cost_micro_usd for o in made for i in o.images)
    assert await service.ledger.audit() == {"counter_mismatches": 0, "open_jobs": 0}


async def test_image_to_image_on_flux2_sends_multipart_with_the_stored_image(
    service, fake_cloudflare
):
    upload = await service.upload(png(800, 600), user_id="u1", guild_id="g1")
    assert upload.storage_key in fake_cloudflare.images
    result = await service.generate(ask("make it night", image_id=upload.id))
    assert result.images[0].source_image_id == upload.id
    [call] = [c for c in fake_cloudflare.ai_requests() if "flux-2-klein-4b" in c.path]
    assert call.content_type.startswith("multipart/form-data")
    assert "input_image_0" in call.body


async def test_enhancement_is_charged_and_used(service, fake_cloudflare):
    result = await service.generate(ask("a cat", enhance=True, fresh=True))
    assert result.enhanced and result.prompt_used != "a cat"
    report = await service.ledger.report(service.ledger.today(), service.ledger.today())
    assert "@cf/meta/llama-3.1-8b-instruct-fp8-fast" in report.by_model
    assert result.cost.micro_usd == 634 + report.by_model[
        "@cf/meta/llama-3.1-8b-instruct-fp8-fast"][1]  # fmt: skip


async def test_enhancement_failure_falls_back_to_the_prompt_and_refunds(service, fake_cloudflare):
    fake_cloudflare.inject("401", path_contains="llama")
    result = await service.generate(ask("a cat", enhance=True, fresh=True))
    assert result.prompt_used == "a cat"
    assert await service.ledger.audit() == {"counter_mismatches": 0, "open_jobs": 0}
    assert (await service.ledger.user_usage("u1", "g1")).micro_usd == 634


async def test_runtime_picks_cloudflare_from_settings_and_never_logs_the_token(
    make_settings, cloudflare_env, fake_cloudflare, caplog
):
    caplog.set_level(logging.DEBUG)
    async with open_runtime(make_settings(**cloudflare_env)) as runtime:
        assert runtime.provider.name == "cloudflare" and runtime.store.name == "cloudflare"
        fake_cloudflare.inject("500")
        result = await runtime.service.generate(ask())
        assert result.images[0].url.startswith(fake_cloudflare.delivery_base)
    assert FAKE_CF_TOKEN not in caplog.text


class WallClock:
    """A wall clock a test can move forward, shared by the store (signing) and the fake
    Cloudflare (checking ``exp``)."""

    def __init__(self) -> None:
        self.offset = 0.0

    def __call__(self) -> float:
        return time.time() + self.offset


async def test_signed_links_are_signed_afresh_on_every_read_and_work_after_7_days(
    tmp_path, fake_cloudflare
):
    clock = WallClock()
    fake_cloudflare.signing_key = FAKE_SIGNING_KEY
    fake_cloudflare.clock = clock
    async with (
        cloudflare_service(
            tmp_path, fake_cloudflare, signing_key=FAKE_SIGNING_KEY, clock=clock
        ) as service,
        httpx.AsyncClient() as client,
    ):
        made = await service.generate(ask(idempotency_key="made-today"))
        [image] = made.images
        upload = await service.upload(png(64, 48), user_id="u1", guild_id="g1")
        for link in (image.url, upload.url):
            assert "exp=" in link and "sig=" in link
            assert (await client.get(link)).status_code == 200

        clock.offset = 8 * 24 * 3600.0  # a week and a day later
        for old_link in (image.url, upload.url):  # what was shown then has expired…
            assert (await client.get(old_link)).status_code == 403
        # …but every read hands out a link signed now: API JSON, Details, listings, replays,
        # the /upload record.
        fresh = [
            (await service.get_image(image.id)).url,
            (await service.visible_image(upload.id, "u1", "g1")).url,
            image_to_public(await service.get_image(upload.id))["url"],
            *(i.url for i in await service.user_images("u1")),
            *(i.url for i in await service.user_images_page("u1", limit=10, before=None)),
            (await service.generate(ask(idempotency_key="made-today"))).images[0].url,
            (await service.upload(png(64, 48), user_id="u1", guild_id="g1")).url,
        ]
        for link in fresh:
            served = await client.get(link)
            assert served.status_code == 200, link
        hosted = fake_cloudflare.images[image.storage_key].data
        assert (await client.get(fresh[0])).content == hosted
        deleted = await service.delete_image(upload.id, requester_id="u1")
        assert deleted.url != upload.url and "sig=" in deleted.url


async def test_a_burst_of_generations_and_uploads_stays_within_the_account_limit(
    tmp_path, fake_cloudflare
):
    """Cloudflare's 1,200 per 5 minutes, scaled down to 20 per second on both sides: 25
    generations (each one ai/run call and one upload) and 15 uploads at once, 65 requests, and
    the fake Cloudflare never has to refuse one."""
    fake_cloudflare.account_limit, fake_cloudflare.account_window = 20, 1.0
    fake_cloudflare.account_block_seconds = 5.0
    limits = {"account_requests": 20, "account_window_seconds": 1.0, "sleep": asyncio.sleep}
    async with cloudflare_service(tmp_path, fake_cloudflare, limits) as service:
        generations = [
            service.generate(GenerateRequest(prompt=f"burst picture {n}", user_id=f"g{n}",
                                             guild_id="g1"))
            for n in range(25)
        ]  # fmt: skip
        uploads = [service.upload(png(40, 30 + n), user_id=f"up{n}") for n in range(15)]
        outcomes = await asyncio.gather(*generations, *uploads, return_exceptions=True)
        assert [o for o in outcomes if isinstance(o, BaseException)] == []
        assert fake_cloudflare.api_requests == 25 * 2 + 15
        assert fake_cloudflare.account_429s == 0
        assert len(fake_cloudflare.images) == 40
        assert await service.ledger.audit() == {"counter_mismatches": 0, "open_jobs": 0}
