"""A cheap event-loop lag probe (LOOP_LAG_PROBE): a timer that should fire every 10 ms; how
late it fires is how long something held the loop. The worst lag is logged when it stops."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator

log = logging.getLogger(__name__)

TICK = 0.01


class LoopLagProbe:
    """Measures the loop's worst stall while running (``worst``, in seconds)."""

    def __init__(self) -> None:
        self.worst = 0.0
        self.ticks = 0

    async def run(self) -> None:
        while True:
            expected = time.perf_counter() + TICK
            await asyncio.sleep(TICK)
            self.worst = max(self.worst, time.perf_counter() - expected)
            self.ticks += 1


@contextlib.asynccontextmanager
async def loop_lag_probe(enabled: bool) -> AsyncIterator[LoopLagProbe | None]:
    """While inside, probe the loop (if ``enabled``); log the worst stall on the way out."""
    if not enabled:
        yield None
        return
    probe = LoopLagProbe()
    task = asyncio.create_task(probe.run())
    try:
        yield probe
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        log.warning("loop lag probe: worst stall %.1f ms over %d ticks",
                    probe.worst * 1000, probe.ticks)  # fmt: skip
