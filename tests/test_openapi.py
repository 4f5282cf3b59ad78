"""The OpenAPI document: valid OpenAPI 3.1, served unchanged, in step with the routes, and true
of the real server (schemathesis fuzzes every operation over a socket on 127.0.0.1)."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Coroutine, Iterator
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import pytest
import requests
import schemathesis
from aiohttp import web
from hypothesis import HealthCheck, settings

from bot.config import load_settings
from bot.runtime import Runtime, open_runtime
from bot.web.app import build_web_app
from bot.web.openapi import openapi_document

T = TypeVar("T")

GENEROUS = {
    "QUOTA_USER_DAILY_IMAGES": 100_000,
    "QUOTA_USER_DAILY_USD": 1000,
    "QUOTA_GUILD_DAILY_USD": 100_000,
    "QUOTA_DAILY_NEURONS": 100_000_000,
    "API_RATE_PER_MINUTE": 100_000,
}


@dataclass
class LiveServer:
    """The real app on 127.0.0.1, served by its own event loop on a background thread."""

    url: str
    token: str
    runtime: Runtime
    loop: asyncio.AbstractEventLoop

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = 30) -> T:
        """Run a coroutine on the server's loop (where the runtime lives) and wait for it."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    @property
    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    data_dir = tmp_path_factory.mktemp("openapi") / "data"
    env = {"DATA_DIR": str(data_dir), "WEB_PORT": "0", **{k: str(v) for k, v in GENEROUS.items()}}
    cfg = load_settings(env)
    started: Future[LiveServer] = Future()
    stop: Future[asyncio.Event] = Future()

    async def serve() -> None:
        async with open_runtime(cfg) as runtime:
            _, token = await runtime.keys.create(user_id="42", guild_id="", name="openapi")
            runner = web.AppRunner(build_web_app(runtime), access_log=None)
            await runner.setup()
            try:
                site = web.TCPSite(runner, "127.0.0.1", 0)
                await site.start()
                port = runner.addresses[0][1]
                event = asyncio.Event()
                stop.set_result(event)
                started.set_result(
                    LiveServer(f"http://127.0.0.1:{port}", token, runtime, asyncio.get_running_loop())
                )
                await event.wait()
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
    server = started.result(timeout=30)
    try:
        yield server
    finally:
        event = stop.result(timeout=5)
        server.loop.call_soon_threadsafe(event.set)
        thread.join(timeout=30)
        assert not thread.is_alive(), "the live server did not shut down"


CONFIG = schemathesis.Config.from_dict(
    {
        "seed": 20260131,
        "generation": {"mode": "all", "max-examples": 30, "database": "none"},
        "phases": {"stateful": {"enabled": False}},
    }
)
SCHEMA = schemathesis.openapi.from_dict(openapi_document(), config=CONFIG)


@SCHEMA.parametrize()
@settings(deadline=None, suppress_health_check=list(HealthCheck), database=None)
def test_fuzz(case: schemathesis.Case, live: LiveServer) -> None:
    case.call_and_validate(base_url=live.url, headers=live.auth, timeout=30)


def test_smoke(live: LiveServer) -> None:
    r = requests.get(live.url + "/api/openapi.json", timeout=10)
    assert r.json() == openapi_document()
