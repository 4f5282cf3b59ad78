"""The per-key API rate limit (API_RATE_PER_MINUTE), one count for every process on the ledger.

Fixed windows of ``seconds`` (a minute), aligned to the clock: each request is ONE atomic upsert
of its key's counter for the current window, counted only while the count is under the limit
(``bot.ledger.limits``), so two processes can never both let the N+1th request through. A
refused request waits until its window ends (``Retry-After``). Each process, on its first request
in a new window, deletes the windows before it, so the table holds about one row per active key.
"""

from __future__ import annotations

import math

from bot.ledger.limits import SharedLimits


class ApiRateLimit:
    def __init__(self, limits: SharedLimits, per_minute: int, seconds: int = 60) -> None:
        self._limits = limits
        self.per_minute = per_minute
        self.seconds = seconds
        self._window = -1  # the newest window this process has seen

    async def wait_for(self, key_id: str) -> int | None:
        """Count one request of ``key_id``: None when it may go ahead, else the whole seconds
        until its window ends (at least 1)."""
        now_ms = self._limits.now_ms()
        window = now_ms // 1000 // self.seconds * self.seconds
        if window > self._window:
            self._window = window
            await self._limits.forget_windows(window)
        if await self._limits.hit(key_id, window, self.per_minute):
            return None
        return max(1, math.ceil(((window + self.seconds) * 1000 - now_ms) / 1000))
