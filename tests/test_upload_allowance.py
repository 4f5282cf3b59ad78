"""Uploads are metered: a daily allowance per user by count and by bytes, exact under
concurrency, refused like a generation quota; on Cloudflare Images each upload is charged its
storage price (real SQLite, real files, the fake Cloudflare and the API over real sockets)."""

from __future__ import annotations

import asyncio
import io
import os
from datetime import datetime

import pytest
from aiohttp import web
from PIL import Image

from bot.discord_bot import ImageBot
from bot.errors import QuotaExceeded
from bot.runtime import open_runtime
from tests import test_api
from tests.conftest import png

# The ledger-level tests run on SQLite and on PostgreSQL (tests/conftest.py).
pytestmark = pytest.mark.both_ledgers

start_api = test_api.start_api  # the HTTP API fixture


def noise_png(seed: int, width: int = 300, height: int = 300) -> bytes:
    """A PNG that does not compress: about width × height × 3 bytes."""
    image = Image.frombytes("RGB", (width, height), os.urandom(width * height * 3))
    image.putpixel((0, 0), (seed % 256, 0, 0))
    out = io.BytesIO()
    image.save(out, format="PNG")
    return out.getvalue()


async def outcomes_of(uploads: list) -> tuple[list, list[QuotaExceeded]]:
    results = await asyncio.gather(*uploads, return_exceptions=True)
    refused = [r for r in results if isinstance(r, QuotaExceeded)]
    made = [r for r in results if not isinstance(r, BaseException)]
    assert len(made) + len(refused) == len(results), results
    return made, refused


async def test_concurrent_uploads_never_pass_the_daily_count(make_settings):
    async with open_runtime(make_settings(QUOTA_USER_DAILY_UPLOADS=3)) as runtime:
        service = runtime.service
        uploads = [
            service.upload(png(20 + n, 20), user_id="u1", guild_id=f"g{n % 2}") for n in range(30)
        ]
        made, refused = await outcomes_of(uploads)
        assert len(made) == 3  # all servers together
        assert {r.limit for r in refused} == {"user_daily_uploads"}
        assert "3 of your 3 uploads" in refused[0].user_message
        assert refused[0].resets_at.hour == 0
        assert await runtime.ledger.uploads_today("u1") == (3, sum(r.bytes for r in made))
        assert len(await runtime.ledger.list_images("u1", limit=100)) == 3  # nothing partial
        stored = [p for p in (runtime.settings.data_dir / "images").rglob("img_*") if p.is_file()]
        assert len(stored) == 3
        assert await service.upload(png(20, 21), user_id="u2")  # another user is not affected
        assert (await runtime.ledger.audit())["counter_mismatches"] == 0


async def test_concurrent_uploads_never_pass_the_daily_bytes(make_settings):
    async with open_runtime(make_settings(QUOTA_USER_DAILY_UPLOAD_MB=1)) as runtime:
        files = [noise_png(n) for n in range(12)]
        fits = 1024 * 1024 // len(files[0])
        assert 1 <= fits < len(files)
        made, refused = await outcomes_of(
            [runtime.service.upload(data, user_id="u1") for data in files]
        )
        assert len(made) == fits
        count, size = await runtime.ledger.uploads_today("u1")
        assert count == fits and size <= 1024 * 1024
        assert {r.limit for r in refused} == {"user_daily_upload_bytes"}
        assert "daily upload allowance left" in refused[0].user_message


async def test_a_failed_upload_gives_its_allowance_back(make_settings):
    async with open_runtime(make_settings(QUOTA_USER_DAILY_UPLOADS=1)) as runtime:
        with pytest.raises(Exception):  # noqa: B017 (any refusal: the bytes are no image)
            await runtime.service.upload(b"\x89PNG\r\n\x1a\nnot really", user_id="u1")
        assert await runtime.service.upload(png(), user_id="u1")


async def test_the_api_refuses_an_upload_past_the_allowance_like_a_quota(start_api):
    api = await start_api(QUOTA_USER_DAILY_UPLOADS=1)

    async def upload(data: bytes):
        return await api.http.post("/api/upload", files={"file": ("a.png", data, "image/png")},
                                   headers=api.auth)  # fmt: skip

    assert (await upload(png(30, 30))).status_code == 201
    refused = await upload(png(31, 30))
    assert refused.status_code == 403
    assert refused.json()["error"] == "Quota exceeded"
    details = refused.json()["details"]
    assert details["limit"] == "user_daily_uploads"
    assert datetime.fromisoformat(details["resets_at"]).hour == 0
    # refused before its body is read: a JSON body past the allowance is not even parsed
    unread = await api.http.post("/api/upload", content=b"{not json", headers={
        **api.auth, "Content-Type": "application/json"})  # fmt: skip
    assert unread.status_code == 403 and unread.json()["error"] == "Quota exceeded"


async def test_uploads_to_cloudflare_images_are_charged_their_storage_price(
    make_settings, cloudflare_env
):
    settings = make_settings(**cloudflare_env, CLOUDFLARE_IMAGES_STORAGE_USD="0.00005")
    async with open_runtime(settings) as runtime:
        record = await runtime.service.upload(png(), user_id="u1", guild_id="g1")
        job = await runtime.ledger.get_job(record.job_id or "")
        assert job is not None and (job.state, job.micro_usd, job.bytes) == (
            "settled", 50, record.bytes)
        assert record.cost_micro_usd == 50
        assert (await runtime.ledger.user_usage("u1", "g1")).micro_usd == 50


async def test_uploads_to_the_local_store_cost_nothing(local_runtime):
    record = await local_runtime.service.upload(png(), user_id="u1")
    job = await local_runtime.ledger.get_job(record.job_id or "")
    assert job is not None and job.micro_usd == 0 and record.cost_micro_usd == 0


async def test_discord_upload_past_the_allowance_is_a_clear_quota_reply(
    fake_discord, bot_harness, make_settings
):
    async with open_runtime(make_settings(QUOTA_USER_DAILY_UPLOADS=1)) as runtime:
        await bot_harness.start(ImageBot(runtime))
        for n, needle in ((0, "Uploaded"), (1, "uploads for today")):
            image = fake_discord.add_attachment(f"cat{n}.png", png(40 + n, 30), "image/png")
            interaction = await fake_discord.slash("upload", {"image": image},
                                                   user=fake_discord.member)  # fmt: skip
            await interaction.wait_for_callback()
            message = await interaction.wait_for_message(
                lambda m, needle=needle: needle in m.content + " ".join(map(str, m.embeds))
            )
        assert message.ephemeral
        assert len(await runtime.ledger.list_images(str(fake_discord.member.id))) == 1


async def test_the_api_refuses_before_fetching_a_url_it_cannot_accept(start_api):
    api = await start_api(QUOTA_USER_DAILY_UPLOADS=1, ALLOW_PRIVATE_URLS="true")
    fetched: list[str] = []

    async def picture(request: web.Request) -> web.Response:
        fetched.append(request.path)
        return web.Response(body=png(30, 30), content_type="image/png")

    app = web.Application()
    app.router.add_get("/pic.png", picture)
    runner, base = await test_api.serve(app)
    try:
        assert (await api.post("/api/upload", {"url": f"{base}/pic.png"})).status_code == 201
        refused = await api.post("/api/upload", {"url": f"{base}/pic.png"})
        assert refused.status_code == 403
        assert refused.json()["details"]["limit"] == "user_daily_uploads"
        assert fetched == ["/pic.png"]  # the second was never fetched
    finally:
        await runner.cleanup()


async def test_uploads_turned_off_say_so(make_settings):
    async with open_runtime(make_settings(QUOTA_USER_DAILY_UPLOADS=0)) as runtime:
        with pytest.raises(QuotaExceeded, match="turned off"):
            await runtime.service.upload(png(), user_id="u1")
