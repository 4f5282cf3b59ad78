"""The web gallery in a real browser: Debian's headless Chromium driven by Playwright.

Against the real web server on 127.0.0.1 with images made by the real service: the page loads
with only the user's images (each picture actually decoded, each with alt text), the chart
renders, paging works, a phone-sized window needs no sideways scrolling, the admin's server
page has its top users and CSV, nothing is fetched from anywhere but the bot's own server, and an
expired or altered link is refused. Screenshots go to build/screenshots/ (untracked;
SCREENSHOT_DIR=docs/screenshots refreshes the committed ones). Without the browser the test
skips, except in CI (CI=true), where it fails: .ci/run installs it.
"""

from __future__ import annotations

import asyncio
import os
import socket
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from aiohttp import web

from bot.config import Settings
from bot.gallery_links import GalleryLinks, gallery_secret
from bot.runtime import Runtime, open_runtime
from bot.web.app import build_web_app
from bot.web.server import GuardedAppRunner
from tests.test_discord_gallery import make_images
from tests.test_web_gallery import altered

CHROMIUM = Path("/usr/bin/chromium")
FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]  # fmt: skip
SCREENSHOTS = Path(
    os.environ.get("SCREENSHOT_DIR") or Path(__file__).resolve().parents[1] / "build/screenshots"
)
GUILD = "1001"


def require_chromium() -> None:
    if CHROMIUM.exists():
        return
    if os.environ.get("CI") == "true":
        pytest.fail("Debian's chromium is not installed (.ci/run installs it with apt-get)")
    pytest.skip("Debian's chromium is not installed: apt-get install -y chromium")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


@pytest.fixture
async def site(make_settings: Callable[..., Settings]) -> AsyncIterator[Runtime]:
    """A runtime whose PUBLIC_BASE_URL is the web server it runs, so the pictures load."""
    require_chromium()
    port = free_port()
    settings = make_settings(WEB_PORT=port, QUOTA_USER_DAILY_IMAGES=100, QUOTA_USER_DAILY_USD=1)
    async with open_runtime(settings) as runtime:
        runner = GuardedAppRunner(build_web_app(runtime), settings)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        try:
            yield runtime
        finally:
            await runner.cleanup()


async def test_the_web_gallery_in_chromium(site: Runtime, tmp_path: Path) -> None:
    from playwright.async_api import async_playwright

    mine = await make_images(site, "u1", GUILD, 26, "a lantern in the fog")
    theirs = await make_images(site, "u2", GUILD, 2, "someone else's castle")
    gallery = site.gallery
    newest_first = list(reversed(mine))
    await asyncio.to_thread(SCREENSHOTS.mkdir, parents=True, exist_ok=True)
    elsewhere: list[str] = []

    async with async_playwright() as playwright:
        context = await playwright.chromium.launch_persistent_context(
            str(tmp_path / "profile"),  # a new, empty profile
            executable_path=str(CHROMIUM),
            headless=True,
            args=FLAGS,
            viewport={"width": 1200, "height": 900},
        )
        context.on(
            "request",
            lambda r: None if urlsplit(r.url).hostname == "127.0.0.1" else elsewhere.append(r.url),
        )
        page = await context.new_page()
        try:
            response = await page.goto(gallery.link("u1", GUILD), wait_until="load")
            assert response is not None and response.status == 200
            assert await page.title() == "Your gallery"
            shown = await page.eval_on_selector_all(
                "[data-image-id]", "cards => cards.map(c => c.dataset.imageId)"
            )
            assert shown == newest_first[:24]
            assert not set(shown) & set(theirs)
            await page.evaluate(  # lazy pictures below the fold: load them all now
                "() => Promise.all([...document.images].map("
                "i => (i.loading = 'eager', i.decode())))"
            )
            pictures = await page.eval_on_selector_all(
                "img", "imgs => imgs.map(i => [i.id, i.naturalWidth, i.alt])"
            )
            assert len(pictures) == 25  # 24 images and the chart
            assert all(width > 0 and alt for _, width, alt in pictures)  # decoded, described
            assert [w for name, w, _ in pictures if name == "chart"] == [900]
            assert "a lantern in the fog" in await page.inner_text("#images")
            await page.screenshot(path=str(SCREENSHOTS / "gallery.png"))

            await page.click("#next")
            await page.wait_for_load_state("load")
            assert await page.inner_text("#page-number") == "Page 2 of 2"
            shown = await page.eval_on_selector_all(
                "[data-image-id]", "cards => cards.map(c => c.dataset.imageId)"
            )
            assert shown == newest_first[24:]
            await page.click("#previous")
            await page.wait_for_load_state("load")
            assert await page.inner_text("#page-number") == "Page 1 of 2"

            await page.set_viewport_size({"width": 390, "height": 844})  # a phone
            sideways = await page.evaluate(
                "() => document.documentElement.scrollWidth - window.innerWidth"
            )
            assert sideways <= 0
            await page.screenshot(path=str(SCREENSHOTS / "gallery-phone.png"))

            await page.set_viewport_size({"width": 1200, "height": 900})
            await page.goto(gallery.link("admin", GUILD, server=True), wait_until="load")
            assert await page.title() == "Server gallery"
            users = await page.eval_on_selector_all(
                "#top-users tbody tr", "rows => rows.map(r => r.cells[0].innerText)"
            )
            assert users == ["u1", "u2"]  # most spent first
            assert await page.get_attribute("#csv", "href") is not None
            top = await page.locator("#spending-heading").bounding_box()
            bottom = await page.locator("#csv").bounding_box()
            assert top is not None and bottom is not None
            height = bottom["y"] + bottom["height"] - top["y"] + 32
            usage = {"x": 0, "y": top["y"] - 16, "width": 1200, "height": height}
            await page.screenshot(
                path=str(SCREENSHOTS / "gallery-server.png"), full_page=True, clip=usage
            )

            secret = gallery_secret(site.settings)
            day_ago = GalleryLinks(secret, 24, clock=lambda: time.time() - 24 * 3600 - 1)
            for token in (day_ago.token("u1", GUILD), altered(gallery.links.token("u1", GUILD))):
                response = await page.goto(f"{site.settings.public_base_url}/gallery?t={token}")
                assert response is not None and response.status == 403
                assert "not valid or has expired" in await page.inner_text("#refusal")
                assert await page.query_selector("[data-image-id]") is None
        finally:
            await context.close()
    assert elsewhere == []  # works offline: no script, font or picture from anywhere else
