"""Single-flight: identical requests in the same cache scope share one generation.

The first request for a (cache key, scope) claims it with a future; others arriving before it
finishes join that future instead of paying for the same image again. A claim always ends:
with the image, or with an error the joiners see (never left pending).
"""

from __future__ import annotations

import asyncio

from bot.errors import BotError, ProviderUnavailable
from bot.generation.plan import Plan, Slot
from bot.ledger import ImageRecord

Flights = dict[int, asyncio.Future[ImageRecord]]


class SingleFlight:
    def __init__(self) -> None:
        self._inflight: dict[tuple[str, str], asyncio.Future[ImageRecord]] = {}

    def joinable(self, plan: Plan, slots: list[Slot]) -> Flights:
        """The slots an identical request is already generating, by index."""
        if not plan.cache_scope:
            return {}
        found: Flights = {}
        for slot in slots:
            future = self._inflight.get((slot.cache_key, plan.cache_scope))
            if future is not None:
                found[slot.index] = future
        return found

    def claim(self, plan: Plan, own: list[Slot]) -> Flights:
        """A future per slot this request generates itself; call with no await since the
        cache check, so an identical request arriving now joins instead."""
        loop = asyncio.get_running_loop()
        futures: Flights = {}
        for slot in own:
            future: asyncio.Future[ImageRecord] = loop.create_future()
            futures[slot.index] = future
            if plan.cache_scope:
                self._inflight.setdefault((slot.cache_key, plan.cache_scope), future)
        return futures

    @staticmethod
    def fail(futures: Flights, exc: BaseException) -> None:
        error = (
            exc
            if isinstance(exc, BotError)
            else ProviderUnavailable("The earlier identical request did not finish.")
        )
        for future in futures.values():
            if not future.done():
                future.set_exception(error)
                future.exception()  # joiners may not exist: mark it retrieved

    def release(self, plan: Plan, own: list[Slot], futures: Flights) -> None:
        self.fail(futures, ProviderUnavailable("The image was not produced."))
        for slot in own:
            key = (slot.cache_key, plan.cache_scope or "")
            if self._inflight.get(key) is futures[slot.index]:
                del self._inflight[key]
