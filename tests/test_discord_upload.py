"""/upload by URL through the real client and the fake Discord: the same upload-from-URL path
as ``POST /api/upload`` (``ImageLibrary.upload_from_url``), with bot/outbound.py's checks."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from aiohttp import web

from bot.discord_bot import ImageBot
from bot.runtime import open_runtime
from tests.conftest import png


@pytest.fixture
async def picture_site() -> AsyncIterator[str]:
    """A web server on 127.0.0.1 serving one PNG at /cat.png (and nothing else)."""
    app = web.Application()

    async def cat(request: web.Request) -> web.Response:
        return web.Response(body=png(300, 200), content_type="image/png")

    app.router.add_get("/cat.png", cat)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()


async def uploaded(fake, options):  # type: ignore[no-untyped-def]
    interaction = await fake.slash("upload", options)
    return await interaction.wait_for_message(lambda m: bool(m.content))


async def test_upload_by_url_hosts_the_image(fake_discord, bot_harness, make_settings,
                                             picture_site):  # fmt: skip
    async with open_runtime(make_settings(ALLOW_PRIVATE_URLS="true")) as runtime:
        await bot_harness.start(ImageBot(runtime))
        done = await uploaded(fake_discord, {"url": f"{picture_site}/cat.png"})
        assert "Uploaded" in done.content
        record = await runtime.ledger.get_image(done.embeds[0]["footer"]["text"])
        assert record.kind == "upload" and (record.width, record.height) == (300, 200)
        assert record.user_id == str(fake_discord.member.id)
        assert await runtime.service.library.image_bytes(record) == png(300, 200)


async def test_upload_by_url_refuses_a_private_address_and_charges_nothing(
    fake_discord, bot_harness, local_runtime, picture_site
):
    await bot_harness.start(ImageBot(local_runtime))
    plain = await uploaded(fake_discord, {"url": f"{picture_site}/cat.png"})
    assert plain.ephemeral and plain.content == "Only https:// URLs are accepted."
    local = picture_site.replace("http://", "https://")
    refused = await uploaded(fake_discord, {"url": f"{local}/cat.png"})
    assert refused.ephemeral and "private or local" in refused.content
    assert await local_runtime.service.user_images(str(fake_discord.member.id)) == []
    assert await local_runtime.ledger.audit() == {"counter_mismatches": 0, "open_jobs": 0}


async def test_upload_needs_exactly_one_of_image_and_url(fake_discord, bot_harness,
                                                         local_runtime, picture_site):  # fmt: skip
    await bot_harness.start(ImageBot(local_runtime))
    neither = await uploaded(fake_discord, {})
    assert neither.ephemeral and "either an image or a url" in neither.content
    picture = fake_discord.add_attachment("cat.png", png(10, 10), "image/png")
    both = await uploaded(fake_discord, {"image": picture, "url": f"{picture_site}/cat.png"})
    assert both.ephemeral and "either an image or a url" in both.content
    assert await local_runtime.service.user_images(str(fake_discord.member.id)) == []
