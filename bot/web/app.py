"""The built-in web server (aiohttp.web): hosts local-store images and answers health checks.

``GET /images/{id}/{variant}`` serves what the local store holds, as the original (``public``)
or resized with the Cloudflare variant grammar (``w=…,h=…,fit=…``), with long-lived caching
headers. Resizing runs off the event loop; rendered variants sit in a byte-bounded LRU cache.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections import OrderedDict

from aiohttp import web

from bot import imaging
from bot.errors import BotError, NotFound
from bot.runtime import Runtime
from bot.stores.local import LocalImageStore

log = logging.getLogger(__name__)

RUNTIME_KEY = web.AppKey("runtime", Runtime)
IMMUTABLE = "public, max-age=31536000, immutable"


class VariantCache:
    """Rendered variants, least recently used first out, bounded by total bytes."""

    def __init__(self, max_bytes: int = 64 * 1024 * 1024) -> None:
        self.max_bytes = max_bytes
        self._items: OrderedDict[tuple[str, str], tuple[bytes, str]] = OrderedDict()
        self._size = 0

    def get(self, key: tuple[str, str]) -> tuple[bytes, str] | None:
        item = self._items.get(key)
        if item is not None:
            self._items.move_to_end(key)
        return item

    def put(self, key: tuple[str, str], item: tuple[bytes, str]) -> None:
        if len(item[0]) > self.max_bytes // 4:
            return
        old = self._items.pop(key, None)
        if old is not None:
            self._size -= len(old[0])
        self._items[key] = item
        self._size += len(item[0])
        while self._size > self.max_bytes:
            _, (data, _) = self._items.popitem(last=False)
            self._size -= len(data)

    def drop(self, image_id: str) -> None:
        for key in [k for k in self._items if k[0] == image_id]:
            self._size -= len(self._items.pop(key)[0])


CACHE_KEY = web.AppKey("variant_cache", VariantCache)


async def serve_image(request: web.Request) -> web.StreamResponse:
    runtime = request.app[RUNTIME_KEY]
    store = runtime.store
    if not isinstance(store, LocalImageStore):
        raise web.HTTPNotFound(text="Images are hosted on Cloudflare Images.")
    image_id = request.match_info["image_id"]
    try:
        variant = imaging.parse_variant(request.match_info["variant"])
    except BotError as exc:
        raise web.HTTPBadRequest(text=exc.user_message) from None
    etag = '"' + hashlib.sha256(f"{image_id}/{variant.name}".encode()).hexdigest()[:32] + '"'
    cache = request.app[CACHE_KEY]
    item = cache.get((image_id, variant.name))
    if item is None:
        try:
            original = await store.get(image_id)
        except NotFound:
            cache.drop(image_id)
            raise web.HTTPNotFound(text="No such image.") from None
        if request.headers.get("If-None-Match") == etag:
            return web.Response(status=304, headers={"ETag": etag, "Cache-Control": IMMUTABLE})
        try:
            item = await asyncio.to_thread(imaging.render_variant, original, variant)
        except BotError as exc:
            raise web.HTTPBadRequest(text=exc.user_message) from None
        if variant.name != "public":
            cache.put((image_id, variant.name), item)
    elif await store.find(image_id) is None:  # deleted since it was cached
        cache.drop(image_id)
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
    from bot.web.http import errors_middleware

    app = web.Application(
        client_max_size=11 * 1024 * 1024, middlewares=[errors_middleware, auth_middleware]
    )
    app[RUNTIME_KEY] = runtime
    app[CACHE_KEY] = VariantCache()
    app[API] = Api(runtime, KeyRateLimiter(runtime.settings.api_rate_per_minute))
    app.router.add_get("/images/{image_id}/{variant}", serve_image)
    app.router.add_get("/healthz", healthz)
    add_api_routes(app)

    async def resume_batches(app: web.Application) -> None:
        resumed = await runtime.batches.resume()
        if resumed:
            log.info("resumed %d unfinished batch(es)", resumed)

    app.on_startup.append(resume_batches)
    return app


async def start_web_server(runtime: Runtime) -> web.AppRunner:
    """Start listening on WEB_HOST:WEB_PORT; the caller cleans up the runner."""
    runner = web.AppRunner(build_web_app(runtime), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, runtime.settings.web_host, runtime.settings.web_port)
    await site.start()
    log.info("web server listening on %s", runtime.settings.public_base_url)
    return runner
