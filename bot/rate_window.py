"""A sliding window of recent events: the one count behind every rate limit in the bot (API
keys, the Cloudflare limiters). At most ``limit`` times are kept, so memory stays bounded."""

from __future__ import annotations

from collections import deque


class SlidingWindow:
    def __init__(self, limit: int, seconds: float) -> None:
        self.limit = limit
        self.seconds = seconds
        self.times: deque[float] = deque(maxlen=limit)

    def count(self, now: float) -> int:
        """Events within the window ending ``now`` (older ones are forgotten)."""
        while self.times and self.times[0] <= now - self.seconds:
            self.times.popleft()
        return len(self.times)

    def add(self, when: float) -> None:
        self.times.append(when)

    def next_free(self) -> float | None:
        """When the oldest event leaves the window (None when there is none)."""
        return self.times[0] + self.seconds if self.times else None
