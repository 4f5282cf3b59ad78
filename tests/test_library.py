"""The image library (bot/library.py): what fronts ask about a stored image instead of asking
the store, and uploads by URL. Real SQLite, the real local store, the fake Cloudflare over
HTTP, a real web server on 127.0.0.1 for the URL."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from aiohttp import web

from bot.errors import QuotaExceeded
from bot.runtime import open_runtime
from tests.conftest import png


@pytest.fixture
async def counting_site() -> AsyncIterator[tuple[str, list[str]]]:
    """A web server serving one PNG, noting every path asked for."""
    asked: list[str] = []
    app = web.Application()

    async def picture(request: web.Request) -> web.Response:
        asked.append(request.path)
        return web.Response(body=png(40, 30), content_type="image/png")

    app.router.add_get("/{name}", picture)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        yield f"http://127.0.0.1:{port}", asked
    finally:
        await runner.cleanup()


async def test_a_private_local_store_has_its_bytes_attached_and_names_its_file(local_runtime):
    library = local_runtime.service.library
    record = await library.upload(png(20, 10), user_id="u1")
    assert await library.bytes_to_attach(record) == png(20, 10)  # Discord cannot reach it
    path = library.local_file(record)
    assert path is not None and path.read_bytes() == png(20, 10)
    assert library.hosted_here and await library.hosted_original(record.id) == png(20, 10)


async def test_a_public_local_store_needs_no_attachment(make_settings):
    settings = make_settings(PUBLIC_BASE_URL="https://images.example.com")
    async with open_runtime(settings) as runtime:
        library = runtime.service.library
        record = await library.upload(png(20, 10), user_id="u1")
        assert await library.bytes_to_attach(record) is None
        assert library.local_file(record) is not None


async def test_cloudflare_images_is_not_hosted_here_and_has_no_local_file(
    make_settings, cloudflare_env
):
    async with open_runtime(make_settings(**cloudflare_env)) as runtime:
        library = runtime.service.library
        record = await library.upload(png(20, 10), user_id="u1")
        assert not library.hosted_here and library.local_file(record) is None
        assert await library.bytes_to_attach(record) is None  # its URL is public
        assert await library.image_bytes(record) == png(20, 10)
        assert not runtime.service.renders_previews


async def test_upload_by_url_is_refused_before_fetching_when_no_upload_fits_today(
    make_settings, counting_site
):
    base, asked = counting_site
    settings = make_settings(ALLOW_PRIVATE_URLS="true", QUOTA_USER_DAILY_UPLOADS="1")
    async with open_runtime(settings) as runtime:
        library = runtime.service.library
        first = await library.upload_from_url(f"{base}/a.png", user_id="u1")
        assert (first.width, first.height, first.kind) == (40, 30, "upload")
        with pytest.raises(QuotaExceeded):
            await library.upload_from_url(f"{base}/b.png", user_id="u1")
        assert asked == ["/a.png"]  # the second was never fetched
        assert await runtime.ledger.audit() == {"counter_mismatches": 0, "open_jobs": 0}
