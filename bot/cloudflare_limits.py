"""How many Cloudflare calls may start, and when: the limiters every call goes through.

``AccountLimiter`` keeps the whole account under Cloudflare's API limit (1,200 requests per 5
minutes per token; going over blocks every call for 5 minutes), fair between generation and
storage, and pauses every call when a 429 says the account is blocked. With a ``SlotBudget``
(``bot.account_budget``: the account's budget shared by every process on the ledger) each slot
must also come from it. ``SlidingWindowLimiter`` keeps ``ai/run`` under Workers AI's per-minute
limits, which are per account too (so, with a budget, shared by every process the same way):
``RunLimits`` holds one for text-to-image (720 a minute) and one for the img2img model, which
Cloudflare's limits page lists with 1,500 a minute of its own; every other image model (inpainting,
FLUX.2 with input images) is a text-to-image model there and shares the 720.
"""

from __future__ import annotations

import asyncio
import time
import weakref
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Literal, Protocol

from bot.rate_window import SlidingWindow

Sleep = Callable[[float], Awaitable[None]]
Clock = Callable[[], float]
TraceHook = Callable[[str, object], Awaitable[None]]

ACCOUNT_WINDOW_SECONDS = 300.0  # Cloudflare's window, and how long it blocks an account over it
RUN_WINDOW_SECONDS = 60.0  # Workers AI's limits are per minute
TEXT_TO_IMAGE_PER_MINUTE = 720
IMG2IMG_PER_MINUTE = 1500
IMG2IMG_MODEL = "@cf/runwayml/stable-diffusion-v1-5-img2img"  # its own limit (Cloudflare's page)
DEFAULT_ACCOUNT_REQUESTS = 1000  # per window: safely under Cloudflare's 1,200

CallKind = Literal["generation", "storage"]


@dataclass(frozen=True)
class Budgeted:
    """A shared budget's answer: a slot whose call must end by ``deadline`` (this limiter's
    clock), or no slot (``deadline`` None) and when to ask again."""

    deadline: float | None = None
    retry_at: float = 0.0


class SlotBudget(Protocol):
    """Where slots come from beyond this process's own count (the budget every process shares).
    ``paused_until`` (this limiter's clock) is a pause another process announced."""

    paused_until: float

    async def take(self) -> Budgeted: ...

    def announce_pause(self, seconds: float) -> None: ...


class _Window:
    """What both limiters share: timestamps within a sliding window (never more than ``limit``
    of them, so memory is bounded) and one lock, so one waiter at a time sleeps for a free slot
    (the lock is released if a waiter is cancelled)."""

    def __init__(self, limit: int, window: float, clock: Clock, sleep: Sleep) -> None:
        if limit < 1:
            raise ValueError("limit must be at least 1")
        self.limit = limit
        self.window = window
        self._clock = clock
        self._sleep = sleep
        self.recent = SlidingWindow(limit, window)
        self._lock = asyncio.Lock()

    @property
    def _times(self) -> deque[float]:
        return self.recent.times


class SlidingWindowLimiter(_Window):
    """At most ``limit`` starts in any ``window`` seconds; callers wait (FIFO) for a free slot.
    With a ``budget`` each start also needs a slot of it, and ``acquire`` returns by when the
    call's request must have been sent (the budget counts it no longer; None: no bound)."""

    def __init__(
        self,
        limit: int,
        window: float = RUN_WINDOW_SECONDS,
        *,
        clock: Clock = time.monotonic,
        sleep: Sleep = asyncio.sleep,
        budget: SlotBudget | None = None,
    ) -> None:
        super().__init__(limit, window, clock, sleep)
        self.budget = budget

    async def acquire(self) -> float | None:
        async with self._lock:
            while True:
                now = self._clock()
                if self.recent.count(now) < self.limit:
                    granted = Budgeted(None) if self.budget is None else await self.budget.take()
                    if self.budget is None or granted.deadline is not None:
                        self.recent.add(self._clock())
                        return granted.deadline
                    await self._sleep(max(0.0, granted.retry_at - self._clock()))
                    continue
                await self._sleep((self.recent.next_free() or now) - now)


class RunLimits:
    """The ``ai/run`` limiters, by which limit a model's runs count against."""

    def __init__(
        self,
        text_to_image: int = TEXT_TO_IMAGE_PER_MINUTE,
        img2img: int = IMG2IMG_PER_MINUTE,
        *,
        window: float = RUN_WINDOW_SECONDS,
        clock: Clock = time.monotonic,
        sleep: Sleep = asyncio.sleep,
        budgets: tuple[SlotBudget, SlotBudget] | None = None,
    ) -> None:
        runs, img2img_runs = budgets or (None, None)
        self.text_to_image = SlidingWindowLimiter(
            text_to_image, window, clock=clock, sleep=sleep, budget=runs
        )
        self.img2img = SlidingWindowLimiter(
            img2img, window, clock=clock, sleep=sleep, budget=img2img_runs
        )

    def for_path(self, path: str) -> SlidingWindowLimiter:
        return self.img2img if path == f"/ai/run/{IMG2IMG_MODEL}" else self.text_to_image


class AccountLimiter(_Window):
    """At most ``limit`` Cloudflare requests in any ``window`` seconds, for the whole account.

    A request holds its slot from the moment it is sent until ``window`` seconds after its
    answer came back (``_times`` holds those answers). Cloudflare counts a request when it
    arrives, which is between those two moments, so however the network delays requests,
    Cloudflare never sees more than ``limit`` in any window of its own. Waiters queue per kind
    and the kinds take turns, so a burst of generations cannot starve uploads and deletes (or
    the reverse). ``pause`` holds every waiter back until a block Cloudflare announced is over.
    With a ``budget`` a slot is given only when the budget grants one too; the slot then
    yields the time its call must end by (the grant covers no later answer), and a pause is
    announced to every process through the budget (and theirs reach this one).
    """

    def __init__(
        self,
        limit: int = DEFAULT_ACCOUNT_REQUESTS,
        window: float = ACCOUNT_WINDOW_SECONDS,
        *,
        clock: Clock = time.monotonic,
        sleep: Sleep = asyncio.sleep,
        budget: SlotBudget | None = None,
    ) -> None:
        super().__init__(limit, window, clock, sleep)
        self.budget = budget
        self._in_flight = 0
        self._released = asyncio.Event()
        self._paused_until = 0.0
        # The front waiter of each kind queues on the shared lock, so the kinds alternate.
        self._kind_locks: dict[CallKind, asyncio.Lock] = {
            "generation": asyncio.Lock(),
            "storage": asyncio.Lock(),
        }

    @property
    def _pause_end(self) -> float:
        shared = self.budget.paused_until if self.budget is not None else 0.0
        return max(self._paused_until, shared)

    @property
    def paused_for(self) -> float:
        """Seconds until a pause announced by Cloudflare is over (0 when none)."""
        return max(0.0, self._pause_end - self._clock())

    def pause(self, seconds: float) -> None:
        """Hold every call back for ``seconds`` (a 429 blocked the account), in every process
        when the budget is shared."""
        self._paused_until = max(self._paused_until, self._clock() + seconds)
        if self.budget is not None:
            self.budget.announce_pause(seconds)

    @asynccontextmanager
    async def slot(self, kind: CallKind) -> AsyncIterator[float | None]:
        """Hold a slot for one call; yields when the call must have ended (None: no bound)."""
        deadline = await self._acquire(kind)
        try:
            yield deadline
        finally:
            self._in_flight -= 1
            self.recent.add(self._clock())
            self._released.set()

    async def _acquire(self, kind: CallKind) -> float | None:
        async with self._kind_locks[kind], self._lock:
            waited_until: float | None = None
            while True:
                now = self._clock()
                paused_until = self._pause_end
                if now < paused_until and paused_until != waited_until:
                    waited_until = paused_until  # once per pause, whatever the clock says
                    await self._sleep(waited_until - now)
                    continue
                if self._in_flight + self.recent.count(now) < self.limit:
                    if self.budget is None:
                        self._in_flight += 1
                        return None
                    granted = await self.budget.take()
                    if granted.deadline is not None:
                        self._in_flight += 1
                        return granted.deadline
                    pause = self._pause_end
                    if pause <= self._clock() or pause == waited_until:  # else: wait the pause
                        await self._sleep(max(0.0, granted.retry_at - self._clock()))
                    continue
                free = self.recent.next_free()
                if free is not None:
                    await self._sleep(free - now)
                else:  # every slot is a request still in flight: wait for one to answer
                    self._released.clear()
                    await self._released.wait()


def until_sent(
    bound: asyncio.Timeout, send_by: float, deadline: float, clock: Clock
) -> TraceHook:
    """An httpcore trace hook that enforces a run's send bound: ``bound`` (an ``asyncio.timeout``
    set to ``send_by``) is moved to ``deadline`` (``clock``'s times) once the request body is
    fully written; a request still being connected or sent at the send bound is cut off, and one
    whose writing would only begin after it (a late event loop) is not begun at all.

    The hook holds ``bound`` weakly: the response keeps its request and so this hook, and a
    timeout holds its task, so a strong reference would make the finished task, with its
    result (the images), garbage that only a full collection frees."""
    bound_ref = weakref.ref(bound)

    async def trace(event: str, info: object) -> None:  # events: http11.… or http2.…
        if event.endswith(("send_request_headers.started", "send_request_body.started")):
            if clock() >= send_by:
                raise TimeoutError("past its send bound")
        elif event.endswith("send_request_body.complete"):
            cut = bound_ref()
            if cut is not None and not cut.expired():
                cut.reschedule(asyncio.get_running_loop().time() + max(0.0, deadline - clock()))

    return trace
