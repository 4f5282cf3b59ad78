"""Concurrent calls for one key share one run of the work (and its result or error)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Hashable
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class SingleFlight(Generic[K, V]):
    """At most one run per key at a time; callers arriving meanwhile await the same outcome."""

    def __init__(self) -> None:
        self._running: dict[K, asyncio.Future[V]] = {}

    async def run(self, key: K, work: Callable[[], Awaitable[V]]) -> V:
        """Join the key's run if there is one, else lead a new one."""
        running = self._running.get(key)
        if running is not None:
            return await asyncio.shield(running)
        return await self.lead(key, work)

    async def lead(self, key: K, work: Callable[[], Awaitable[V]]) -> V:
        """Run ``work`` as the key's run (later callers join this one, not an earlier one)."""
        future: asyncio.Future[V] = asyncio.get_running_loop().create_future()
        self._running[key] = future
        try:
            result = await work()
            future.set_result(result)
            return result
        except BaseException as exc:
            future.set_exception(exc)
            future.exception()  # joiners may not exist: mark it retrieved
            raise
        finally:
            if self._running.get(key) is future:
                del self._running[key]
