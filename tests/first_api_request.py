"""Run as ``python -m tests.first_api_request DATA_DIR``: the bot's real web server
(``start_web_server``, embedded backends) in a fresh interpreter, asked what a Discord bot's
server is asked (/healthz, /metrics, a placeholder, a hosted image), then its first API
requests. Prints one JSON line: the modules loaded before and after the API requests, the
thread that imported the API's handlers, and the answers (tests/test_lazy_imports.py)."""

from __future__ import annotations

import asyncio
import importlib.abc
import json
import sys
import threading
from typing import Any

WATCHED = ("pydantic", "pydantic_core", "bot.public", "bot.web.bodies", "bot.web.api",
           "bot.web.openapi")  # fmt: skip
imported_on: dict[str, str] = {}


class Watch(importlib.abc.MetaPathFinder):
    """Records the thread each watched module is imported on; finds nothing itself."""

    def find_spec(self, name: str, path: Any = None, target: Any = None) -> None:
        if name in WATCHED and name not in imported_on:
            imported_on[name] = threading.current_thread().name


sys.meta_path.insert(0, Watch())

import httpx  # noqa: E402

from bot.config import load_settings  # noqa: E402
from bot.runtime import open_runtime  # noqa: E402
from bot.web.app import start_web_server  # noqa: E402


def loaded() -> list[str]:
    return [name for name in WATCHED if name in sys.modules]


async def main(data_dir: str) -> dict[str, Any]:
    settings = load_settings({"DATA_DIR": data_dir, "WEB_PORT": "0"})
    report: dict[str, Any] = {}
    async with open_runtime(settings) as runtime:
        _, token = await runtime.keys.create(user_id="42", guild_id="", name="lazy")
        auth = {"Authorization": f"Bearer {token}"}
        runner = await start_web_server(runtime)
        base = f"http://127.0.0.1:{runner.addresses[0][1]}"
        try:
            async with httpx.AsyncClient(base_url=base, trust_env=False, timeout=60) as client:
                health = await client.get("/healthz")
                await client.get("/metrics")
                placeholder = await client.get("/64x48/lazy-heron")
                image_id = placeholder.headers["X-Image-Id"]
                hosted = await client.get(f"/images/{image_id}/public")
                report["before"] = loaded()
                report["health"] = [health.status_code, health.content.decode()]
                report["served"] = [placeholder.status_code, hosted.status_code]
                created = await client.post("/api/generate", json={"prompt": "a lazy heron"},
                                            headers=auth)  # fmt: skip
                fetched = await client.get(f"/api/images/{created.json()['id']}", headers=auth)
                refused = await client.post("/api/generate", json={"prompt": 5}, headers=auth)
                document = await client.get("/api/openapi.json")
                report["after"] = loaded()
                report["created"] = [created.status_code, created.json()]
                report["fetched"] = [fetched.status_code, fetched.json()]
                report["refused"] = [refused.status_code, refused.json()]
                report["document"] = [document.status_code, document.json()]
        finally:
            await runner.cleanup()
    report["imported_on"] = imported_on
    return report


if __name__ == "__main__":
    print(json.dumps(asyncio.run(main(sys.argv[1]))))
