"""Job slots: at most N jobs running per user and M overall; the rest wait in a bounded queue.

Waiters are served first-come first-served among those allowed to run (a user at their limit
does not hold up others behind them). Each waiter learns its position whenever it changes; a
``Ticket`` reads that position at any time and lets the waiter leave the line (a cancel).
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

from bot.errors import Busy

PositionCallback = Callable[[int], None]


@dataclass(eq=False)
class _Waiter:
    user_id: str
    future: asyncio.Future[None]
    on_position: PositionCallback | None
    position: int = field(default=0)


class Ticket:
    """One request's place in line: its position while it waits, and a way to leave."""

    def __init__(self) -> None:
        self._waiter: _Waiter | None = None
        self._scheduler: JobScheduler | None = None

    @property
    def position(self) -> int | None:
        """1 for the next to run; None when not waiting (running, done, or never queued)."""
        waiter = self._waiter
        return waiter.position if waiter is not None and not waiter.future.done() else None

    def leave(self, reason: BaseException) -> bool:
        """Leave the line at once; the waiting ``slot`` raises ``reason``. False (and nothing
        done) when not waiting."""
        waiter, scheduler = self._waiter, self._scheduler
        if waiter is None or scheduler is None or waiter.future.done():
            return False
        scheduler._withdraw(waiter)
        waiter.future.set_exception(reason)
        return True


class JobScheduler:
    def __init__(self, *, max_per_user: int, max_running: int, max_queue: int) -> None:
        self.max_per_user = max_per_user
        self.max_running = max_running
        self.max_queue = max_queue
        self._running: Counter[str] = Counter()
        self._total_running = 0
        self._waiting: list[_Waiter] = []

    @property
    def running(self) -> int:
        return self._total_running

    @property
    def waiting(self) -> int:
        return len(self._waiting)

    def _can_run(self, user_id: str) -> bool:
        return self._total_running < self.max_running and self._running[user_id] < self.max_per_user

    def _start(self, user_id: str) -> None:
        self._running[user_id] += 1
        self._total_running += 1

    @asynccontextmanager
    async def slot(
        self,
        user_id: str,
        on_position: PositionCallback | None = None,
        ticket: Ticket | None = None,
    ) -> AsyncIterator[None]:
        """Hold a running slot for the body. Busy when the queue is full."""
        # Waiters left in the queue are all blocked by a limit (releases start any that can
        # run), so a newcomer who can run now jumps no one who could.
        if self._can_run(user_id):
            self._start(user_id)
        else:
            await self._wait(user_id, on_position, ticket)
        try:
            yield
        finally:
            self._running[user_id] -= 1
            if not self._running[user_id]:
                del self._running[user_id]
            self._total_running -= 1
            self._wake()

    async def _wait(
        self, user_id: str, on_position: PositionCallback | None, ticket: Ticket | None
    ) -> None:
        if len(self._waiting) >= self.max_queue:
            raise Busy(
                f"The bot is busy: {len(self._waiting)} jobs are already waiting. "
                "Try again in a minute."
            )
        waiter = _Waiter(user_id, asyncio.get_running_loop().create_future(), on_position)
        self._waiting.append(waiter)
        if ticket is not None:
            ticket._waiter, ticket._scheduler = waiter, self
        self._announce(len(self._waiting) - 1)
        try:
            await waiter.future
        except BaseException:
            future = waiter.future
            if future.done() and not future.cancelled() and future.exception() is None:
                # Granted a slot just as we were cancelled: hand it back.
                self._running[user_id] -= 1
                if not self._running[user_id]:
                    del self._running[user_id]
                self._total_running -= 1
                self._wake()
            elif waiter in self._waiting:
                index = self._waiting.index(waiter)
                self._waiting.remove(waiter)
                self._announce(index)
            raise

    def _withdraw(self, waiter: _Waiter) -> None:
        """Take a waiter out of the line (a ticket leaving) and tell those behind it."""
        index = self._waiting.index(waiter)
        self._waiting.pop(index)
        self._announce(index)

    def _wake(self) -> None:
        """Start every waiter that may run now, in queue order; tell the rest their place."""
        first_changed: int | None = None
        index = 0
        while index < len(self._waiting) and self._total_running < self.max_running:
            waiter = self._waiting[index]
            if waiter.future.done():  # cancelled while queued; it removes itself when resumed
                self._waiting.pop(index)
                first_changed = index if first_changed is None else first_changed
            elif self._running[waiter.user_id] < self.max_per_user:
                self._waiting.pop(index)
                self._start(waiter.user_id)
                waiter.future.set_result(None)
                first_changed = index if first_changed is None else first_changed
            else:
                index += 1
        if first_changed is not None:
            self._announce(first_changed)

    def _announce(self, start: int) -> None:
        """Tell waiters their new place. Far back in a long queue, only every tenth place is
        worth a message: re-announcing every shift to everyone is O(n²) in the queue length."""
        for index in range(start, len(self._waiting)):
            waiter = self._waiting[index]
            position = index + 1
            if waiter.position == position:
                continue
            first = waiter.position == 0
            waiter.position = position
            if waiter.on_position is not None and (first or position <= 20 or position % 10 == 0):
                waiter.on_position(position)
