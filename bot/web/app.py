"""The built-in web server (aiohttp.web): one app with image hosting, health, the JSON API and
placeholders (every route from bot/web/routes.py's table), behind the guarded HTTP server."""

from __future__ import annotations

import logging

from aiohttp import web

from bot.runtime import Runtime
from bot.web.api_context import API, Api
from bot.web.http import errors_middleware
from bot.web.limits import ANONYMOUS_LIMITER, RUNTIME_KEY, AddressRateLimiter, KeyRateLimiter
from bot.web.routes import add_routes, auth_middleware, stopping_middleware
from bot.web.server import GuardedAppRunner, name_the_server, warn_if_exposed

log = logging.getLogger(__name__)


def build_web_app(runtime: Runtime) -> web.Application:
    """Image hosting, health, the JSON API and placeholders, in one aiohttp app."""
    settings = runtime.settings
    app = web.Application(
        client_max_size=settings.web_max_request_mb * 1024 * 1024,
        middlewares=[errors_middleware, stopping_middleware, auth_middleware],
    )
    app.on_response_prepare.append(name_the_server)
    app[RUNTIME_KEY] = runtime
    app[ANONYMOUS_LIMITER] = AddressRateLimiter(settings.image_rate_per_minute)
    app[API] = Api(runtime, KeyRateLimiter(runtime.keys))
    add_routes(app)  # every route, from the one table the OpenAPI document is made of

    async def resume_batches(app: web.Application) -> None:
        resumed = await runtime.batches.resume()
        if resumed:
            log.info("resumed %d unfinished batch(es)", resumed)

    app.on_startup.append(resume_batches)
    return app


async def start_web_server(runtime: Runtime) -> web.AppRunner:
    """Start listening on WEB_HOST:WEB_PORT, with the server's limits; the caller cleans up."""
    settings = runtime.settings
    runner = GuardedAppRunner(build_web_app(runtime), settings)
    await runner.setup()
    site = web.TCPSite(runner, settings.web_host, settings.web_port)
    await site.start()
    warn_if_exposed(settings.web_host)
    log.info("web server listening on %s", settings.public_base_url)
    return runner
