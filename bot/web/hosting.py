"""The built-in web server's own pages: local-store images, the readiness check and metrics.

``GET /images/{id}/{variant}`` serves what the local store holds, as the original (``public``)
or resized with the Cloudflare variant grammar (``w=…,h=…,fit=…``), with long-lived caching
headers. Anonymous requests are rate-limited per client address; resizing is bounded, runs on
the variant pool (bot/variants.py) and is cached there.
"""

from __future__ import annotations

import hashlib
import logging
from typing import Any

from aiohttp import web

from bot import imaging
from bot.errors import BotError, NotFound
from bot.metrics import CONTENT_TYPE
from bot.web.http import json_response
from bot.web.limits import RUNTIME_KEY, check_anonymous_rate

log = logging.getLogger(__name__)

IMMUTABLE = "public, max-age=31536000, immutable"


async def serve_image(request: web.Request) -> web.StreamResponse:
    check_anonymous_rate(request)
    runtime = request.app[RUNTIME_KEY]
    library = runtime.service.library
    if not library.hosted_here:
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
            original = await library.hosted_original(image_id)
        except NotFound:
            variants.cache.drop(image_id)
            raise web.HTTPNotFound(text="No such image.") from None
        if request.headers.get("If-None-Match") == etag:
            return web.Response(status=304, headers={"ETag": etag, "Cache-Control": IMMUTABLE})
        item = await variants.render(key, original, variant)
    elif not await library.still_hosted(image_id):  # deleted since it was cached
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
    """Readiness: the database answers, its schema is the one this code migrates to, and the
    provider and store are reachable; 503 names the check that failed (never a secret)."""
    runtime = request.app[RUNTIME_KEY]
    if runtime.service.closing:  # stopping: send new work elsewhere
        return json_response(health("stopping", {"process": "stopping"}), status=503)
    checks: dict[str, str] = {}
    healthy = True
    for name, check in runtime.service.health_checks():
        try:
            await check()
            checks[name] = "ok"
        except Exception as exc:
            healthy = False
            checks[name] = exc.user_message if isinstance(exc, BotError) else "unavailable"
            log.warning("health check %s failed: %s", name, type(exc).__name__)
    return json_response(health("ok" if healthy else "degraded", checks), 200 if healthy else 503)


def health(status: str, checks: dict[str, str]) -> dict[str, Any]:
    """The body /healthz answers with, as bot/public.py's ``Health`` documents it (built as a
    plain dict, so answering it loads no pydantic; tests/test_lazy_imports.py compares)."""
    return {"status": status, "checks": checks}


async def metrics(request: web.Request) -> web.Response:
    """This process's metrics in Prometheus' text format (jobs by state read from the ledger
    now; a database that does not answer leaves the last values and is logged)."""
    runtime = request.app[RUNTIME_KEY]
    try:
        await runtime.service.refresh_metrics()
    except Exception as exc:
        log.warning("metrics: jobs by state not refreshed: %s", type(exc).__name__)
    body = runtime.metrics.exposition()
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE})
