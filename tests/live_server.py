"""The real web app on 127.0.0.1, served by its own event loop on a background thread, for the
synchronous HTTP tests (schemathesis, requests): the ``live`` fixture, one server per module.

It runs the embedded backends with generous quotas. Host names the API would contact (upload by
URL, batch webhooks) resolve to 127.0.0.1 on that loop, so they are refused as private: nothing
is ever sent off this machine.
"""

from __future__ import annotations

import asyncio
import socket
import threading
from collections.abc import Coroutine, Iterator
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any, TypeVar

import pytest
import requests
from aiohttp import web

from bot.config import load_settings
from bot.runtime import Runtime, open_runtime
from bot.web.app import build_web_app
from bot.web.server import GuardedAppRunner

T = TypeVar("T")

GENEROUS = {
    "QUOTA_USER_DAILY_IMAGES": 100_000,
    "QUOTA_USER_DAILY_USD": 1000,
    "QUOTA_GUILD_DAILY_USD": 100_000,
    "QUOTA_DAILY_NEURONS": 100_000_000,
    "API_RATE_PER_MINUTE": 100_000,
    "PLACEHOLDER_DAILY_IMAGES": 100_000,
    "IMAGE_RATE_PER_MINUTE": 1_000_000,
}


# --------------------------------------------------------------------------- the live server


@dataclass
class LiveServer:
    """The real app on 127.0.0.1, served by its own event loop on a background thread."""

    url: str
    token: str
    runtime: Runtime
    loop: asyncio.AbstractEventLoop
    lookups: list[str]
    session: requests.Session = field(default_factory=requests.Session)

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = 30) -> T:
        """Run a coroutine on the server's loop (where the runtime lives) and wait for it."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    @property
    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}

    def request(self, method: str, path: str, **kwargs: Any) -> requests.Response:
        headers = {**self.auth, **kwargs.pop("headers", {})}
        return self.session.request(method, self.url + path, headers=headers, timeout=30, **kwargs)


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    """One server for the module (the fuzzing runs many operations against it)."""
    env = {"DATA_DIR": str(tmp_path_factory.mktemp("openapi") / "data"), "WEB_PORT": "0"}
    config = load_settings({**env, **{k: str(v) for k, v in GENEROUS.items()}})
    started: Future[tuple[LiveServer, asyncio.Event]] = Future()
    lookups: list[str] = []

    async def resolve_locally(host: Any, port: Any, *args: Any, **kwargs: Any) -> list[Any]:
        lookups.append(str(host))
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", ("127.0.0.1", int(port or 443)))]

    async def serve() -> None:
        loop = asyncio.get_running_loop()
        loop.getaddrinfo = resolve_locally  # type: ignore[method-assign]
        async with open_runtime(config) as runtime:
            _, token = await runtime.keys.create(user_id="42", guild_id="", name="openapi")
            runner = GuardedAppRunner(build_web_app(runtime), config)  # as the real server
            await runner.setup()
            try:
                site = web.TCPSite(runner, "127.0.0.1", 0)
                await site.start()
                url = f"http://127.0.0.1:{runner.addresses[0][1]}"
                stop = asyncio.Event()
                started.set_result((LiveServer(url, token, runtime, loop, lookups), stop))
                await stop.wait()
                await runtime.batches.wait_idle()
            finally:
                await runner.cleanup()

    def main() -> None:
        try:
            asyncio.run(serve())
        except BaseException as exc:
            if not started.done():
                started.set_exception(exc)
            raise

    thread = threading.Thread(target=main, name="openapi-live-server", daemon=True)
    thread.start()
    server, stop = started.result(timeout=30)
    server.session.trust_env = False  # no proxy: straight to 127.0.0.1
    try:
        yield server
    finally:
        server.session.close()
        server.loop.call_soon_threadsafe(stop.set)
        thread.join(timeout=60)
        assert not thread.is_alive(), "the live server did not shut down"
