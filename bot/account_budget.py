"""One Cloudflare budget for every process on the ledger: the account's API limit
(CLOUDFLARE_ACCOUNT_REQUESTS_PER_5MIN, per account token, not per process) and, by the same
mechanism under another ``name``, Workers AI's per-minute limits of ``ai/run`` (720 text-to-image
runs a minute per account; the img2img model has 1,500 of its own).

A process takes *grants* of slots in blocks (``block``, fewer when the budget is short) with ONE
atomic statement each (``bot.ledger.limits``: the slots of every live grant plus the new block stay
within the limit), then spends them one per call under ``AccountLimiter``'s own rules. The next
block is fetched in the background once the current one is half used, so calls rarely wait for
the database: one write per block, none per call.

Why a grant can never let the account over its limit, however calls are delayed: a block's slots
may start calls only for ``use_seconds`` after it was granted, and Cloudflare must have counted
each such call within ``call_seconds`` (+ ``margin``) more (the client cuts it off otherwise, as a
timeout); the grant counts against the budget for a full ``window`` after that. Every call
Cloudflare counts in any window of its own (sliding or fixed) therefore belongs to a grant that
was live at that window's end, and the live grants never hold more than the limit. Unused slots
of an expired block are simply lost.

What ``call_seconds`` bounds differs by budget. For the account (5-minute window) it is the whole
call: the answer must have come by then, whenever Cloudflare counts a request. For ``ai/run``
(60 s window) holding a grant for the whole call (up to 120 s) would cut the sustained rate to a
third: 720 · 60 / 186 ≈ 230 a minute. Cloudflare counts a run when its request arrives (the
reference's reading of its limits; a run being generated is not counted again), and a request
arrives at most moments after our client wrote its last byte. So for ``ai/run`` ``call_seconds``
is a *send* bound: the client cuts off a run whose request is not fully written by then
(``until_sent``, on httpcore's trace events: connecting, waiting for the pool and sending all
count), and ``margin`` (``ARRIVAL_MARGIN``) covers bytes still in socket buffers or on the wire.
The answer may then take as long as the call's own time budget allows. Hold = 60 + 5 (use) + 10
(send) + 2 s = 77 s, so one account sustains at most 720 · 60 / 77 ≈ 560 runs a minute: the
price of never being over, however requests are delayed.

Clocks: grants are in wall-clock milliseconds (the machines must keep time, as with NTP); this
process's deadlines are on its monotonic clock.

A 429 that pauses the account here is written to the shared ``cloudflare_pause`` row; every
process reads it when it takes a block and on each lease renewal (``refresh``).
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections import deque
from dataclasses import dataclass

from bot.cloudflare_limits import RUN_WINDOW_SECONDS, Budgeted, Clock
from bot.errors import LedgerUnavailable
from bot.ledger.limits import ACCOUNT, SharedLimits

log = logging.getLogger(__name__)

DEFAULT_BLOCK = 16
RETRY_SECONDS = 1.0  # when the ledger cannot be reached, ask again after this long
# ai/run: blocks are used for RUN_USE_SECONDS, each run fully sent within RUN_SEND_SECONDS more,
# and counted ARRIVAL_MARGIN longer (bytes in socket buffers, on the wire).
RUN_USE_SECONDS, RUN_SEND_SECONDS, ARRIVAL_MARGIN = 5.0, 10.0, 2.0


@dataclass
class _Block:
    left: int
    size: int
    use_by: float  # monotonic: no call starts on this block after it
    deadline: float  # monotonic: every call on this block has ended (or, ai/run: been sent)


class SharedAccountBudget:
    """This process's share of one shared budget (``SlotBudget`` for ``AccountLimiter`` or, for
    ``ai/run``, ``SlidingWindowLimiter``)."""

    def __init__(
        self,
        limits: SharedLimits,
        limit: int,
        window: float,
        *,
        block: int = DEFAULT_BLOCK,
        use_seconds: float | None = None,
        call_seconds: float = 60.0,
        margin: float = 0.0,
        name: str = ACCOUNT,
        clock: Clock = time.monotonic,
    ) -> None:
        if limit < 1 or block < 1:
            raise ValueError("limit and block must be at least 1")
        self._limits = limits
        self.limit = limit
        self.block = block
        self.use_seconds = min(30.0, window / 10) if use_seconds is None else use_seconds
        self.call_seconds = call_seconds
        self.name = name
        self.hold_ms = math.ceil((window + self.use_seconds + call_seconds + margin) * 1000)
        self._clock = clock
        self._blocks: deque[_Block] = deque(maxlen=2)  # the current one and the next
        self._fetching: asyncio.Task[float | None] | None = None
        self._writes: set[asyncio.Task[None]] = set()
        self.paused_until = 0.0
        self.blocks_taken = 0

    @classmethod
    def for_runs(cls, limits: SharedLimits, limit: int, name: str) -> SharedAccountBudget:
        """A budget of ``ai/run`` calls a minute (``name``: AI_RUN or AI_IMG2IMG): its slots'
        deadlines are send bounds (see the module docstring)."""
        return cls(limits, limit, RUN_WINDOW_SECONDS, use_seconds=RUN_USE_SECONDS,
                   call_seconds=RUN_SEND_SECONDS, margin=ARRIVAL_MARGIN, name=name)  # fmt: skip

    async def take(self) -> Budgeted:
        """One slot (its call's deadline), or when to ask again (the budget is spent or the
        account paused)."""
        while True:
            now = self._clock()
            while self._blocks and (self._blocks[0].left == 0 or self._blocks[0].use_by <= now):
                self._blocks.popleft()
            if self._blocks:
                current = self._blocks[0]
                current.left -= 1
                if current.left <= current.size // 2 and len(self._blocks) == 1:
                    self._start_fetch()
                return Budgeted(current.deadline)
            if self._fetching is None or self._fetching.done():
                self._start_fetch()
            assert self._fetching is not None
            retry_at = await asyncio.shield(self._fetching)
            if retry_at is not None and not self._blocks:
                return Budgeted(None, max(retry_at, self._clock() + 0.01))

    def _start_fetch(self) -> None:
        if self._fetching is None or self._fetching.done():
            self._fetching = asyncio.create_task(self._fetch(), name="account budget block")

    async def _fetch(self) -> float | None:
        """Take a block: None when one was added, else when (monotonic) to ask again."""
        started, wall = self._clock(), self._limits.now_ms()
        try:
            got = await self._limits.grant(self.block, self.limit, self.hold_ms, wall, self.name)
        except LedgerUnavailable as exc:
            log.warning("could not take Cloudflare %s slots: %s", self.name, exc.code)
            return started + RETRY_SECONDS
        if isinstance(got, int):
            self.blocks_taken += 1
            use_by = started + self.use_seconds
            self._blocks.append(_Block(got, got, use_by, use_by + self.call_seconds))
            return None
        if got.paused_until_ms:
            self._note_pause(started, wall, got.paused_until_ms)
            return self.paused_until
        if got.next_expiry_ms is not None:
            return started + max(0.0, (got.next_expiry_ms - wall) / 1000)
        return started + 0.05  # freed in between: ask again at once

    def _note_pause(self, mono: float, wall_ms: int, until_ms: int) -> None:
        self.paused_until = max(self.paused_until, mono + (until_ms - wall_ms) / 1000)

    def announce_pause(self, seconds: float) -> None:
        """A 429 paused the account here: tell every process (in the background)."""
        self.paused_until = max(self.paused_until, self._clock() + seconds)
        until_ms = self._limits.now_ms() + math.ceil(seconds * 1000)
        task = asyncio.create_task(self._write_pause(until_ms), name="account pause")
        self._writes.add(task)
        task.add_done_callback(self._writes.discard)

    async def _write_pause(self, until_ms: int) -> None:
        try:
            await self._limits.pause(until_ms)
        except LedgerUnavailable as exc:
            log.warning("could not share the Cloudflare pause with other processes: %s", exc.code)

    async def refresh(self) -> None:
        """On each lease renewal: learn of a pause another process announced; delete grants
        that no longer count."""
        mono, wall = self._clock(), self._limits.now_ms()
        try:
            until = await self._limits.paused_until()
            if until > wall:
                self._note_pause(mono, wall, until)
            await self._limits.forget_grants(wall)
        except LedgerUnavailable as exc:
            log.warning("could not read the shared Cloudflare pause: %s", exc.code)

    async def close(self) -> None:
        tasks = [*self._writes, *([self._fetching] if self._fetching else [])]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
