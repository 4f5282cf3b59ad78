"""The built-in web server over a real socket: image hosting, variants, caching headers, health."""

from __future__ import annotations

import io
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest
from aiohttp import web
from PIL import Image

from bot.config import Settings
from bot.runtime import Runtime, open_runtime
from bot.web.app import build_web_app
from bot.web.server import GuardedAppRunner
from tests.conftest import FAKE_CF_TOKEN, png
from tests.fakes.cloudflare import FakeCloudflare


def jpeg(width: int = 320, height: int = 240) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (width, height), "orange").save(out, format="JPEG", quality=90)
    return out.getvalue()


def decode(data: bytes) -> Image.Image:
    img = Image.open(io.BytesIO(data))
    img.load()
    return img


async def serve(runtime: Runtime) -> tuple[web.AppRunner, str]:
    runner = GuardedAppRunner(build_web_app(runtime), runtime.settings)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    return runner, f"http://127.0.0.1:{port}"


@pytest.fixture
async def client(local_runtime: Runtime) -> AsyncIterator[httpx.AsyncClient]:
    runner, base = await serve(local_runtime)
    try:
        async with httpx.AsyncClient(base_url=base, timeout=10.0) as http:
            yield http
    finally:
        await runner.cleanup()


# --------------------------------------------------------------------------- originals


async def test_public_serves_the_exact_png_bytes_with_caching_headers(
    local_runtime: Runtime, client: httpx.AsyncClient
) -> None:
    data = png(400, 300)
    record = await local_runtime.service.upload(data, user_id="u1")
    response = await client.get(f"/images/{record.id}/public")
    assert response.status_code == 200
    assert response.content == data
    assert response.headers["content-type"].split(";")[0] == "image/png"
    assert "immutable" in response.headers["cache-control"]
    etag = response.headers["etag"]
    assert etag

    again = await client.get(f"/images/{record.id}/public", headers={"If-None-Match": etag})
    assert again.status_code == 304
    assert again.content == b""
    assert again.headers["etag"] == etag

    other = await client.get(f"/images/{record.id}/public", headers={"If-None-Match": '"x"'})
    assert other.status_code == 200
    assert other.content == data


async def test_public_serves_a_jpeg_as_image_jpeg(
    local_runtime: Runtime, client: httpx.AsyncClient
) -> None:
    data = jpeg()
    record = await local_runtime.service.upload(data, user_id="u1")
    response = await client.get(f"/images/{record.id}/public")
    assert response.status_code == 200
    assert response.content == data
    assert response.headers["content-type"].split(";")[0] == "image/jpeg"


async def test_a_generated_image_is_served_at_its_url(
    local_runtime: Runtime, client: httpx.AsyncClient
) -> None:
    from bot.requests import GenerateRequest

    result = await local_runtime.service.generate(
        GenerateRequest(prompt="a lighthouse at dusk", user_id="u1")
    )
    image = result.images[0]
    path = urlsplit(image.url).path
    assert path == f"/images/{image.storage_key}/public"
    response = await client.get(path)
    assert response.status_code == 200
    assert response.content == await local_runtime.store.get(image.storage_key)
    assert decode(response.content).size == (image.width, image.height)


# --------------------------------------------------------------------------- variants


async def test_cover_variant_has_the_exact_size_and_an_etag(
    local_runtime: Runtime, client: httpx.AsyncClient
) -> None:
    record = await local_runtime.service.upload(png(400, 300), user_id="u1")
    path = f"/images/{record.id}/w=100,h=50,fit=cover"
    response = await client.get(path)
    assert response.status_code == 200
    assert response.headers["content-type"].split(";")[0] == "image/png"
    assert "immutable" in response.headers["cache-control"]
    img = decode(response.content)
    assert img.format == "PNG"
    assert img.size == (100, 50)

    etag = response.headers["etag"]
    public = await client.get(f"/images/{record.id}/public")
    assert public.headers["etag"] != etag  # one tag per variant
    cached = await client.get(path, headers={"If-None-Match": etag})
    assert cached.status_code == 304


async def test_width_only_scale_down_keeps_the_aspect_ratio(
    local_runtime: Runtime, client: httpx.AsyncClient
) -> None:
    record = await local_runtime.service.upload(jpeg(320, 240), user_id="u1")
    response = await client.get(f"/images/{record.id}/w=100")
    assert response.status_code == 200
    assert response.headers["content-type"].split(";")[0] == "image/jpeg"
    assert decode(response.content).size == (100, 75)


@pytest.mark.parametrize("variant", ["w=0", "fit=banana", "w=100,fit=banana", "foo=1", "w=abc"])
async def test_a_bad_variant_is_400(
    local_runtime: Runtime, client: httpx.AsyncClient, variant: str
) -> None:
    record = await local_runtime.service.upload(png(), user_id="u1")
    response = await client.get(f"/images/{record.id}/{variant}")
    assert response.status_code == 400
    assert not response.content.startswith(b"\x89PNG")


async def test_an_unknown_id_is_404(client: httpx.AsyncClient) -> None:
    for variant in ("public", "w=100"):
        response = await client.get(f"/images/img_{'0' * 20}/{variant}")
        assert response.status_code == 404


async def test_path_traversal_never_reaches_a_file(
    local_runtime: Runtime, client: httpx.AsyncClient, tmp_path: Path
) -> None:
    record = await local_runtime.service.upload(png(), user_id="u1")
    data_dir = local_runtime.settings.data_dir
    (data_dir / "secret.txt").write_text("TOP-SECRET-FILE-CONTENTS", encoding="utf-8")
    assert local_runtime.settings.database_path.is_file()
    hex_part = record.id[4:]
    attempts = [
        "/images/..%2F..%2Fetc%2Fpasswd/public",
        "/images/..%2Fsecret.txt/public",
        "/images/..%2F..%2Fsecret.txt/public",
        "/images/..%2F..%2Fbot.sqlite3/public",
        "/images/img_../public",
        "/images/%2e%2e/public",
        "/images/%2e%2e%2f%2e%2e%2fsecret.txt/public",
        f"/images/img_{hex_part.upper()}/public",  # right length, upper case
        f"/images/img_..{hex_part[2:]}/public",  # right length, dots
        f"/images/img_{hex_part[:-4]}.png/public",  # right length, a dot
        f"/images/{record.id}%2F..%2F..%2Fsecret.txt/public",
    ]
    for attempt in attempts:
        response = await client.get(attempt)
        assert response.status_code in (400, 404), (attempt, response.status_code)
        body = response.content
        assert b"root:" not in body
        assert b"TOP-SECRET" not in body
        assert b"SQLite format" not in body
        assert not body.startswith(b"\x89PNG"), attempt


# --------------------------------------------------------------------------- deletion


async def test_a_deleted_image_is_404(local_runtime: Runtime, client: httpx.AsyncClient) -> None:
    record = await local_runtime.service.upload(png(400, 300), user_id="u1")
    assert (await client.get(f"/images/{record.id}/w=100,h=50,fit=cover")).status_code == 200
    assert (await client.get(f"/images/{record.id}/public")).status_code == 200

    await local_runtime.service.delete_image(record.id, requester_id="u1")

    assert (await client.get(f"/images/{record.id}/public")).status_code == 404
    assert (await client.get(f"/images/{record.id}/w=100,h=50,fit=cover")).status_code == 404
    assert (await client.get(f"/images/{record.id}/w=30")).status_code == 404


async def test_a_cached_variant_of_a_deleted_image_is_404(
    local_runtime: Runtime, client: httpx.AsyncClient
) -> None:
    record = await local_runtime.service.upload(png(400, 300), user_id="u1")
    path = f"/images/{record.id}/w=100,h=50,fit=cover"
    first = await client.get(path)
    assert first.status_code == 200
    etag = first.headers["etag"]

    await local_runtime.service.delete_image(record.id, requester_id="u1")

    # The very first request after the deletion is for the variant that was cached.
    assert (await client.get(path, headers={"If-None-Match": etag})).status_code == 404
    assert (await client.get(path)).status_code == 404


# --------------------------------------------------------------------------- health


async def test_healthz_on_the_local_backends(client: httpx.AsyncClient) -> None:
    response = await client.get("/healthz")
    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "ok"
    assert body["checks"] == {"database": "ok", "migrations": "ok", "provider": "ok", "store": "ok"}


@pytest.mark.parametrize(
    ("path_contains", "failing"),
    [("/ai/models/search", "provider"), ("/images/v1/stats", "store")],
)
@pytest.mark.parametrize("kind", ["500", "401"])
async def test_healthz_is_503_when_cloudflare_fails(
    make_settings: Callable[..., Settings],
    cloudflare_env: dict[str, str],
    fake_cloudflare: FakeCloudflare,
    path_contains: str,
    failing: str,
    kind: str,
) -> None:
    async with open_runtime(make_settings(**cloudflare_env)) as runtime:
        assert (runtime.settings.image_provider, runtime.settings.image_store) == (
            "cloudflare",
            "cloudflare",
        )
        runner, base = await serve(runtime)
        try:
            async with httpx.AsyncClient(base_url=base, timeout=10.0) as http:
                healthy = await http.get("/healthz")
                assert healthy.status_code == 200
                assert healthy.json() == {
                    "status": "ok",
                    "checks": {"database": "ok", "migrations": "ok", "provider": "ok",
                               "store": "ok"},
                }

                fake_cloudflare.inject(kind, path_contains=path_contains)
                degraded = await http.get("/healthz")
                assert degraded.status_code == 503
                body = degraded.json()
                assert body["status"] == "degraded"
                assert body["checks"][failing] != "ok"
                others = {"database", "provider", "store"} - {failing}
                assert all(body["checks"][name] == "ok" for name in others)
                assert FAKE_CF_TOKEN not in degraded.text

                # The fault was a single one: the next check is healthy again.
                assert (await http.get("/healthz")).status_code == 200

                # Images live on Cloudflare Images here; the local route has nothing to serve.
                assert (await http.get(f"/images/img_{'0' * 20}/public")).status_code == 404
        finally:
            await runner.cleanup()
