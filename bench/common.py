"""What the benchmark scripts share: stand-in provider and store with fixed latencies that
record the time spent inside them, generous quotas, and percentiles."""

from __future__ import annotations

import asyncio
import contextvars
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bot.providers.base import GeneratedImage, ImageRequest
from bot.providers.local import LocalProvider
from bot.stores.local import LocalImageStore

SDXL = "@cf/stabilityai/stable-diffusion-xl-base-1.0"
GENEROUS = {
    "QUOTA_USER_DAILY_IMAGES": "1000000",
    "QUOTA_USER_DAILY_USD": "100000",
    "QUOTA_GUILD_DAILY_USD": "1000000",
    "QUOTA_DAILY_NEURONS": "1000000000",
    "MAX_QUEUE": "100000",
    "MAX_JOBS_PER_USER": "64",
    "MAX_CONCURRENT_JOBS": "64",
    "CACHE_SCOPE": "off",
}

# Time spent inside the stand-ins during the current request (a list per request, if set).
EXTERNAL: contextvars.ContextVar[list[float]] = contextvars.ContextVar("external")


def _record(start: float) -> None:
    spent = EXTERNAL.get(None)
    if spent is not None:
        spent.append(time.perf_counter() - start)


class SleepyProvider(LocalProvider):
    """A prepared image after a fixed latency: the provider's time is only waiting.
    ``copy`` gives every request its own bytes, as a real provider would."""

    def __init__(self, latency: float, image: bytes, copy: bool = False) -> None:
        self.latency, self.image, self.copy = latency, image, copy

    async def generate(self, request: ImageRequest) -> GeneratedImage:
        start = time.perf_counter()
        await asyncio.sleep(self.latency)
        _record(start)
        data = bytes(bytearray(self.image)) if self.copy else self.image
        return GeneratedImage(data, "image/png", "png")


class SlowStore(LocalImageStore):
    """The local store after a latency; the whole put counts as the store call."""

    def __init__(self, inner: LocalImageStore, latency: float) -> None:
        super().__init__(inner.root, inner.base_url)
        self.latency = latency

    async def put(self, *args: Any, **kwargs: Any) -> Any:
        start = time.perf_counter()
        await asyncio.sleep(self.latency)
        stored = await super().put(*args, **kwargs)
        _record(start)
        return stored


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]
