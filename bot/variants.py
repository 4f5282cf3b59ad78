"""Rendering variants for strangers: bounded output, a thread pool of their own, a bounded cache.

Anyone who can see an image URL can ask for any variant of it, so this work must never crowd
out generation: it runs on its own small pool (not the default executor generation's local
renderer and the stores use), at most ``workers`` at once plus ``workers * 4`` waiting (more is
a clear Busy), identical concurrent requests share one render, and rendered variants sit in a
byte-bounded LRU cache.
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor

from bot import imaging
from bot.errors import Busy
from bot.single_flight import SingleFlight

Rendered = tuple[bytes, str]  # (bytes, content type)
CacheKey = tuple[str, str]  # (storage key, canonical variant name)

WAITING_PER_WORKER = 4


class VariantCache:
    """Rendered variants, least recently used first out, bounded by total bytes."""

    def __init__(self, max_bytes: int = 64 * 1024 * 1024) -> None:
        self.max_bytes = max_bytes
        self._items: OrderedDict[CacheKey, Rendered] = OrderedDict()
        self._size = 0

    def get(self, key: CacheKey) -> Rendered | None:
        item = self._items.get(key)
        if item is not None:
            self._items.move_to_end(key)
        return item

    def put(self, key: CacheKey, item: Rendered) -> None:
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

    def drop(self, storage_key: str) -> None:
        for key in [k for k in self._items if k[0] == storage_key]:
            self._size -= len(self._items.pop(key)[0])

    @property
    def size(self) -> int:
        return self._size


class VariantRenderer:
    """Renders variants within ``bounds`` on a pool of ``workers`` threads, caching results."""

    def __init__(
        self,
        *,
        workers: int = 2,
        cache_bytes: int = 64 * 1024 * 1024,
        bounds: imaging.VariantBounds = imaging.DEFAULT_BOUNDS,
    ) -> None:
        self.bounds = bounds
        self.cache = VariantCache(cache_bytes)
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="variant")
        self._admitted = asyncio.Semaphore(workers * (1 + WAITING_PER_WORKER))
        self._renders: SingleFlight[CacheKey, Rendered] = SingleFlight()

    def cached(self, key: CacheKey) -> Rendered | None:
        return self.cache.get(key)

    async def render(self, key: CacheKey, original: bytes, variant: imaging.Variant) -> Rendered:
        """The variant of ``original`` (stored under ``key[0]``), from the cache or rendered.

        Raises InvalidRequest for a variant beyond the bounds, Busy when the pool's queue is
        full. 'public' is the original itself and is neither rendered nor cached.
        """
        if variant.is_public:  # only the magic bytes are read: no need for the pool
            return imaging.render_variant(original, variant)
        item = self.cache.get(key)
        if item is not None:
            return item
        return await self._renders.run(key, lambda: self._render_and_cache(key, original, variant))

    async def _render_and_cache(
        self, key: CacheKey, original: bytes, variant: imaging.Variant
    ) -> Rendered:
        item = await self._in_pool(original, variant)
        self.cache.put(key, item)
        return item

    async def _in_pool(self, original: bytes, variant: imaging.Variant) -> Rendered:
        if self._admitted.locked():
            raise Busy("Too many images are being resized right now; try again shortly.")
        async with self._admitted:
            loop = asyncio.get_running_loop()
            return await loop.run_in_executor(
                self._pool, imaging.render_variant, original, variant, self.bounds
            )

    def close(self) -> None:
        """Stop the pool; renders already running finish on their threads."""
        self._pool.shutdown(wait=False, cancel_futures=True)
