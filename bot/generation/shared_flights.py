"""Single-flight across processes: of several processes given the same request at once, one
generates; the others wait for its image in the cache and get it free (today's rule for a
joiner), or make it themselves, charged as usual, if that flight ends without the image, its
process dies (its lease runs out) or the wait outlasts ``wait_seconds``.

The in-process ``SingleFlight`` goes first, so joiners within one process cost no statement;
a fresh generation costs two more (the claim, one per image, and the release); a cache hit
none. Rows are the ledger's (``bot/ledger/flights.py``). Waiters poll with a bounded backoff,
woken at once on PostgreSQL by NOTIFY. At most ``max_waiters`` requests of a process wait;
beyond that a request generates itself, under the scheduler's own limits. A ``fresh`` request
never waits: the cache's image is not what it asked for.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass, field

from bot.errors import ProviderUnavailable
from bot.generation.plan import Plan, Slot
from bot.ledger import ImageRecord, Ledger
from bot.metrics import Metrics

log = logging.getLogger(__name__)

FIRST_POLL, LAST_POLL, LISTENING_POLL = 0.05, 0.5, 2.0


@dataclass
class Taken:
    """What a request does for its own slots after looking at other processes' flights."""

    generate: list[Slot] = field(default_factory=list)  # made here (claimed, or waited enough)
    claimed: list[Slot] = field(default_factory=list)  # rows this request must release
    found: dict[int, ImageRecord] = field(default_factory=dict)  # made by another process
    pending: list[Slot] = field(default_factory=list)  # another's, awaited after our own


class SharedFlights:
    def __init__(
        self, ledger: Ledger, metrics: Metrics, *, wait_seconds: float, max_waiters: int
    ) -> None:
        self.ledger = ledger
        self.flights = ledger.flights
        self.joins = metrics.flight_joins
        self.wait_seconds = wait_seconds
        self.max_waiters = max_waiters
        self.waiters = 0
        metrics.flight_waiters.set_function(lambda: self.waiters)

    async def take(self, plan: Plan, own: list[Slot], *, fresh: bool) -> Taken:
        """Claim each slot; if every one is another process's, wait (and claim again what
        ends without an image). Call ``release`` with ``claimed`` when the flight ends."""
        if plan.cache_scope is None or fresh:
            return Taken(generate=own)
        led, lost = await self._claim(plan, own)
        if led or not lost:
            return Taken(generate=led, claimed=led, pending=lost)
        if self.waiters >= self.max_waiters:
            return Taken(generate=lost)
        self.waiters += 1
        try:
            deadline = asyncio.get_running_loop().time() + self.wait_seconds
            found: dict[int, ImageRecord] = {}
            while True:
                got, ended = await self.wait(plan, lost, deadline)
                found.update(got)
                if not ended:
                    return Taken(found=found)
                if asyncio.get_running_loop().time() >= deadline:
                    return Taken(generate=ended, found=found)
                led, lost = await self._claim(plan, ended)
                if led:
                    return Taken(generate=led, claimed=led, found=found, pending=lost)
        finally:
            self.waiters -= 1

    async def release(self, plan: Plan, taken: Taken) -> None:
        """End the claimed flights (waking their waiters); runs to the end even if the caller
        is cancelled meanwhile, so no row outlives its flight."""
        claimed, taken.claimed = taken.claimed, []
        if claimed and plan.cache_scope is not None:
            keys = [slot.cache_key for slot in claimed]
            release = asyncio.ensure_future(self.flights.release(keys, plan.cache_scope))
            try:
                await asyncio.shield(release)
            except asyncio.CancelledError:
                await asyncio.wait([release])
                raise
            except Exception as exc:  # the row stays until this process's lease is swept
                log.warning("could not end a shared flight now (%s)", type(exc).__name__)

    async def pending(
        self, plan: Plan, slots: list[Slot]
    ) -> tuple[dict[int, ImageRecord], dict[int, ProviderUnavailable]]:
        """Other processes' images for a request that made its other images itself: those
        that appeared, and an error for each that did not."""
        if not slots:
            return {}, {}
        loop = asyncio.get_running_loop()
        found, ended = await self.wait(plan, slots, loop.time() + self.wait_seconds)
        error = ProviderUnavailable("The earlier identical request did not finish.")
        return found, {slot.index: error for slot in ended}

    async def wait(
        self, plan: Plan, slots: list[Slot], deadline: float
    ) -> tuple[dict[int, ImageRecord], list[Slot]]:
        """Wait while other processes make these images: those that appeared, and the slots
        whose flight ended without one, whose process died, or that outlasted ``deadline``."""
        assert plan.cache_scope is not None
        scope, loop = plan.cache_scope, asyncio.get_running_loop()
        waiting = {slot.cache_key: slot for slot in slots}
        found: dict[int, ImageRecord] = {}
        ended: list[Slot] = []
        listening = await self.flights.listening()
        delay, longest = FIRST_POLL, LISTENING_POLL if listening else LAST_POLL
        while waiting:
            keys = list(waiting)
            woken = self.flights.watch(keys)  # before looking: an end meanwhile wakes us
            try:
                live = await self.flights.live(keys, scope)
                for key in keys:
                    if live.get(key):
                        continue
                    slot = waiting.pop(key)
                    hit = None if key in live else await self.ledger.find_cached(key, scope)
                    if hit is not None:
                        found[slot.index] = hit
                    else:
                        ended.append(slot)
                    self.joins.labels(
                        "image" if hit else "taken_over" if key in live else "failed"
                    ).inc()
                left = deadline - loop.time()
                if waiting and left <= 0:
                    ended += waiting.values()
                    self.joins.labels("timeout").inc(len(waiting))
                    break
                if waiting:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(woken.wait(), min(delay, left))
                    delay = min(delay * 2, longest)
            finally:
                self.flights.unwatch(keys, woken)
        return found, ended

    async def _claim(self, plan: Plan, slots: list[Slot]) -> tuple[list[Slot], list[Slot]]:
        """The slots this process now leads, and those another live process leads. The claims
        of one request go out together (one group commit)."""
        assert plan.cache_scope is not None
        scope = plan.cache_scope
        won = await asyncio.gather(
            *(self.flights.claim(s.cache_key, scope) for s in slots), return_exceptions=True
        )
        failed = next((w for w in won if isinstance(w, BaseException)), None)
        if failed is not None:  # none of them is led: give back any that were won
            await self.release(plan, Taken(claimed=slots))
            raise failed
        return (
            [s for s, w in zip(slots, won, strict=True) if w],
            [s for s, w in zip(slots, won, strict=True) if not w],
        )
