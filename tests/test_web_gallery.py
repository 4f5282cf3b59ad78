"""The web gallery over real HTTP: 403 without a valid link (missing, altered, expired), the
CSV only on an admin's server link, user text escaped, deleted and others' images never shown,
the anonymous rate limit, the secret kept across restarts. (tests/test_gallery_browser.py does
the same pages in a real browser.)"""

from __future__ import annotations

import stat
import time
from collections.abc import Callable

import httpx
import pytest

from bot.config import Settings, load_settings
from bot.errors import ConfigError
from bot.gallery_links import GalleryLinks, LinkRefused, gallery_secret
from bot.runtime import Runtime, open_runtime
from tests.test_discord_gallery import make_images
from tests.test_web import serve

GUILD = "1001"


def altered(token: str) -> str:
    """The token with one character of its grant changed (the MAC no longer matches)."""
    index = len(token) // 3
    return token[:index] + ("A" if token[index] != "A" else "B") + token[index + 1 :]


async def get(runtime: Runtime, *paths: str) -> list[httpx.Response]:
    runner, base = await serve(runtime)
    try:
        async with httpx.AsyncClient(base_url=base) as client:
            return [await client.get(path) for path in paths]
    finally:
        await runner.cleanup()


async def test_without_a_valid_link_every_page_answers_403(local_runtime: Runtime) -> None:
    await make_images(local_runtime, "u1", GUILD, 1, "a quiet harbour")
    links = local_runtime.gallery.links
    good = links.token("u1", GUILD)
    day_ago = lambda: time.time() - 24 * 3600 - 1  # noqa: E731
    expired = GalleryLinks(gallery_secret(local_runtime.settings), 24, day_ago).token("u1", GUILD)
    foreign = GalleryLinks(b"another-secret" * 4, 24).token("u1", GUILD)
    bad = ["", "?t=", "?t=nonsense", f"?t={altered(good)}", f"?t={expired}", f"?t={foreign}",
           f"?t={good[:-1]}"]  # fmt: skip
    paths = [f"{page}{query}" for page in ("/gallery", "/gallery/chart.png") for query in bad]
    valid = (f"/gallery?t={good}", f"/gallery/chart.png?t={good}")
    responses = await get(local_runtime, *paths, *valid)
    *refused, page, chart = responses
    for response in refused:
        assert response.status_code == 403, response.url
        assert "not valid or has expired" in response.text
        assert response.headers["Content-Type"].startswith("text/html")
    assert page.status_code == 200 and "a quiet harbour" in page.text
    assert chart.status_code == 200 and chart.content.startswith(b"\x89PNG")


async def test_the_csv_comes_only_with_a_server_link(local_runtime: Runtime) -> None:
    await make_images(local_runtime, "u1", GUILD, 2, "a red kite")
    await make_images(local_runtime, "u2", "2002", 1, "elsewhere")
    links = local_runtime.gallery.links
    own, server = links.token("u1", GUILD), links.token("u1", GUILD, server=True)
    personal_csv, server_csv, server_page = await get(
        local_runtime, f"/gallery/usage.csv?t={own}", f"/gallery/usage.csv?t={server}",
        f"/gallery?t={server}",
    )  # fmt: skip
    assert personal_csv.status_code == 403
    assert server_csv.status_code == 200
    assert server_csv.headers["Content-Disposition"] == 'attachment; filename="usage.csv"'
    rows = server_csv.text.strip().splitlines()
    assert rows[0].startswith("created_at,day,user_id") and len(rows) == 3
    assert all(",u1," in row for row in rows[1:])
    assert 'id="top-users"' in server_page.text and "/gallery/usage.csv?t=" in server_page.text
    assert "elsewhere" not in server_page.text


async def test_user_text_is_escaped_and_deleted_or_others_images_never_shown(
    local_runtime: Runtime,
) -> None:
    hostile = '<script>alert("x")</script> & <img src=x onerror=alert(1)>'
    [kept] = await make_images(local_runtime, "u1", GUILD, 1, hostile)
    [gone] = await make_images(local_runtime, "u1", GUILD, 1, "soon deleted")
    [other] = await make_images(local_runtime, "u2", GUILD, 1, "someone else")
    await local_runtime.service.delete_image(gone, requester_id="u1")
    [page] = await get(local_runtime, f"/gallery?t={local_runtime.gallery.links.token('u1', '')}")
    assert page.status_code == 200
    assert kept in page.text and gone not in page.text and other not in page.text
    assert "<script>" not in page.text and "&lt;script&gt;" in page.text
    assert "<img src=x" not in page.text
    policy = page.headers["Content-Security-Policy"]
    assert "default-src 'none'" in policy and "script-src" not in policy
    assert page.headers["Referrer-Policy"] == "no-referrer"
    assert page.headers["Cache-Control"] == "no-store"


async def test_past_the_last_page_shows_the_last_one(
    make_settings: Callable[..., Settings],
) -> None:
    settings = make_settings(QUOTA_USER_DAILY_IMAGES=40, QUOTA_USER_DAILY_USD=1)
    async with open_runtime(settings) as rt:
        await make_images(rt, "u1", GUILD, 25, "tile")
        token = rt.gallery.links.token("u1", GUILD)
        last, nonsense = await get(rt, f"/gallery?t={token}&page=99", f"/gallery?t={token}&page=x")
    assert "Page 2 of 2" in last.text and last.text.count('class="card"') == 1
    assert "Page 1 of 2" in nonsense.text and nonsense.text.count('class="card"') == 24


async def test_gallery_requests_count_toward_the_anonymous_rate_limit(
    make_settings: Callable[..., Settings],
) -> None:
    async with open_runtime(make_settings(IMAGE_RATE_PER_MINUTE=2)) as runtime:
        token = runtime.gallery.links.token("u1", "")
        responses = await get(runtime, *[f"/gallery?t={token}"] * 2, "/gallery?t=guess")
    assert [r.status_code for r in responses] == [200, 200, 429]


async def test_the_secret_is_made_once_and_links_outlive_a_restart(
    make_settings: Callable[..., Settings],
) -> None:
    settings = make_settings()
    async with open_runtime(settings) as first:
        token = first.gallery.links.token("u1", GUILD)
    secret_file = settings.data_dir / "gallery.secret"
    assert stat.S_IMODE(secret_file.stat().st_mode) == 0o600
    async with open_runtime(settings) as second:
        assert second.gallery.links.verify(token).user_id == "u1"
    async with open_runtime(make_settings(GALLERY_SECRET="s" * 32)) as configured:
        with pytest.raises(LinkRefused):
            configured.gallery.links.verify(token)


def test_a_short_gallery_secret_is_a_configuration_error() -> None:
    with pytest.raises(ConfigError, match="GALLERY_SECRET") as caught:
        load_settings({"GALLERY_SECRET": "short-secret-value"})
    assert "short-secret-value" not in str(caught.value)
    assert load_settings({"GALLERY_LINK_HOURS": "2"}).gallery_link_hours == 2
    with pytest.raises(ConfigError, match="GALLERY_LINK_HOURS"):
        load_settings({"GALLERY_LINK_HOURS": "0"})
