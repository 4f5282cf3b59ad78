"""The built-in web server (aiohttp.web): hosts local-store images and answers health checks.

``GET /images/{id}/{variant}`` serves what the local store holds, as the original (``public``)
or resized with the Cloudflare variant grammar (``w=…,h=…,fit=…``), with long-lived caching
headers. Anonymous requests are rate-limited per client address; resizing is bounded, runs on
the variant pool (bot/variants.py) and is cached there.
"""

from __future__ import annotations

import hashlib
import logging

from aiohttp import web

from bot import imaging
from bot.errors import BotError, NotFound
from bot.runtime import Runtime
from bot.stores.local import LocalImageStore
from bot.web.limits import AddressRateLimiter, client_address

log = logging.getLogger(__name__)

RUNTIME_KEY = web.AppKey("runtime", Runtime)
ANONYMOUS_LIMITER = web.AppKey("anonymous_limiter", AddressRateLimiter)
IMMUTABLE = "public, max-age=31536000, immutable"


def check_anonymous_rate(request: web.Request) -> None:
    """Anonymous image and placeholder requests: a rate limit per client address (429)."""
    trusted = request.app[RUNTIME_KEY].settings.web_trusted_proxies
    request.app[ANONYMOUS_LIMITER].check(client_address(request, trusted))


async def serve_image(request: web.Request) -> web.StreamResponse:
    check_anonymous_rate(request)
    runtime = request.app[RUNTIME_KEY]
    store = runtime.store
    if not isinstance(store, LocalImageStore):
        raise web.HTTPNotFound(text="Images are hosted on Cloudflare Images.")
    image_id = request.match_info["image_id"]
    variant = imaging.parse_variant(
        request.match_info["variant"], max_side=runtime.settings.variant_max_side
    )
    etag = '"' + hashlib.sha256(f"{image_id}/{variant.name}".encode()).hexdigest()[:32] + '"'
    variants = runtime.variants
    key = (image_id, variant.name)
    item = variants.cached(key)
    if item is None:
        try:
            original = await store.get(image_id)
        except NotFound:
            variants.cache.drop(image_id)
            raise web.HTTPNotFound(text="No such image.") from None
        if request.headers.get("If-None-Match") == etag:
            return web.Response(status=304, headers={"ETag": etag, "Cache-Control": IMMUTABLE})
        item = await variants.render(key, original, variant)
    elif await store.find(image_id) is None:  # deleted since it was cached
        variants.cache.drop(image_id)
        raise web.HTTPNotFound(text="No such image.")
    elif request.headers.get("If-None-Match") == etag:
        return web.Response(status=304, headers={"ETag": etag, "Cache-Control": IMMUTABLE})
    data, content_type = item
    return web.Response(
        body=data,
        content_type=content_type,
        headers={"Cache-Control": IMMUTABLE, "ETag": etag, "X-Content-Type-Options": "nosniff"},
    )


async def healthz(request: web.Request) -> web.Response:
    runtime = request.app[RUNTIME_KEY]
    checks: dict[str, str] = {}
    healthy = True
    for name, check in (
        ("database", runtime.ledger.ping),
        ("provider", runtime.provider.check),
        ("store", runtime.store.check),
    ):
        try:
            await check()
            checks[name] = "ok"
        except Exception as exc:
            healthy = False
            checks[name] = exc.user_message if isinstance(exc, BotError) else "unavailable"
            log.warning("health check %s failed: %s", name, type(exc).__name__)
    return web.json_response(
        {"status": "ok" if healthy else "degraded", "checks": checks},
        status=200 if healthy else 503,
    )


def build_web_app(runtime: Runtime) -> web.Application:
    """Image hosting, health, the JSON API and placeholders, in one aiohttp app."""
    from bot.web.api import API, Api, KeyRateLimiter, add_api_routes, auth_middleware
    from bot.web.gallery import add_gallery_routes
    from bot.web.http import errors_middleware
    from bot.web.server import name_the_server

    settings = runtime.settings
    app = web.Application(
        client_max_size=settings.web_max_request_mb * 1024 * 1024,
        middlewares=[errors_middleware, auth_middleware],
    )
    app.on_response_prepare.append(name_the_server)
    app[RUNTIME_KEY] = runtime
    app[ANONYMOUS_LIMITER] = AddressRateLimiter(settings.image_rate_per_minute)
    app[API] = Api(runtime, KeyRateLimiter(settings.api_rate_per_minute))
    app.router.add_get("/images/{image_id}/{variant}", serve_image)
    app.router.add_get("/healthz", healthz)
    add_api_routes(app)
    add_gallery_routes(app)

    async def resume_batches(app: web.Application) -> None:
        resumed = await runtime.batches.resume()
        if resumed:
            log.info("resumed %d unfinished batch(es)", resumed)

    app.on_startup.append(resume_batches)
    return app


async def start_web_server(runtime: Runtime) -> web.AppRunner:
    """Start listening on WEB_HOST:WEB_PORT, with the server's limits; the caller cleans up."""
    from bot.web.server import GuardedAppRunner, warn_if_exposed

    settings = runtime.settings
    runner = GuardedAppRunner(build_web_app(runtime), settings)
    await runner.setup()
    site = web.TCPSite(runner, settings.web_host, settings.web_port)
    await site.start()
    warn_if_exposed(settings.web_host)
    log.info("web server listening on %s", settings.public_base_url)
    return runner
