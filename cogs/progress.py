"""Progress edits of running jobs, coalesced per job and paced per channel.

Discord limits edits per interaction token and, undocumented, per channel: 50 jobs in one
channel each editing every two seconds would meet both. So each job keeps only its latest state
(stale intermediate states are never sent), shows nothing before ``FIRST_EDIT_DELAY`` (a quick
job goes straight to its result), edits at most every ``JOB_EDIT_INTERVAL``, and the jobs of one
channel share one edit every ``CHANNEL_EDIT_INTERVAL``, the job waiting longest first. Closing
a job's progress drops its pending edit, so the result is never queued behind one. Results
themselves take turns in the channel's window (DISCORD_CHANNEL_MESSAGES_PER_10S), so a burst
of results waits here instead of meeting 429s, which count toward Discord's IP ban.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections import deque
from collections.abc import Callable
from datetime import timedelta

import discord

from bot.requests import Progress
from cogs.cancel import cancel_view
from cogs.delivery import DeliveryError, InteractionLink, LinkClosed, describe, late_note
from cogs.render import progress_text

log = logging.getLogger(__name__)

FIRST_EDIT_DELAY = 2.0
JOB_EDIT_INTERVAL = 2.0
CHANNEL_EDIT_INTERVAL = 1.0
CHANNEL_WINDOW = 10.0  # DISCORD_CHANNEL_MESSAGES_PER_10S counts over this window


class ProgressMessage:
    """One job's progress on its interaction's reply, with a ❌ Cancel button once the job is
    reserved; ``update`` is the service's callback."""

    def __init__(
        self,
        board: ProgressBoard,
        link: InteractionLink,
        model: str,
        *,
        typical_seconds: float,
        parallel: int,
        private: bool,
    ) -> None:
        self.link = link
        self.model = model
        self.typical_seconds = typical_seconds
        self.parallel = max(parallel, 1)
        self.private = private
        self.due = time.monotonic() + FIRST_EDIT_DELAY
        self.late = False  # the result will outlast the token: it goes elsewhere
        self._board = board
        self.channel_id = link.interaction.channel_id or 0
        self._latest: Progress | None = None
        self._shown: str | None = None
        self._closed = False
        self._sending: asyncio.Task[None] | None = None

    def update(self, event: Progress) -> None:
        if self._closed or event.stage == "done":
            return
        self._latest = event
        self.late = self.late or self._outlasts_token(event)
        if self.link.usable:
            self._board.want(self)

    def _outlasts_token(self, event: Progress) -> bool:
        """Whether the job is expected to finish after its token stops working."""
        now = discord.utils.utcnow()
        if event.stage == "queued" and event.position is not None:
            rounds = math.ceil(event.position / self.parallel) + 1
            finish = now + timedelta(seconds=rounds * self.typical_seconds)
        elif event.eta is not None:
            finish = event.eta
        else:
            finish = now
        return finish >= self.link.usable_until()

    def text(self) -> str | None:
        if self._latest is None:
            return None
        text = progress_text(self._latest, self.model)
        return f"{text}\n{late_note(self.private)}" if self.late else text

    @property
    def sending(self) -> bool:
        return self._sending is not None and not self._sending.done()

    def send(self) -> None:
        """Start the edit of the latest state (the pacer decided it is this job's turn)."""
        self._sending = asyncio.create_task(self._send())

    async def _send(self) -> None:
        text, job_id = self.text(), self._latest.job_id if self._latest else None
        try:
            if text is not None and text != self._shown and not self._closed:
                self._shown = text
                if job_id is None:
                    await self.link.edit(content=text)
                else:
                    await self.link.edit(content=text, view=cancel_view(job_id))
        except LinkClosed:
            pass
        except DeliveryError as error:
            log.debug("progress edit of interaction %s failed: %s", self.link.interaction.id,
                      describe(error))  # fmt: skip
        finally:
            self.due = time.monotonic() + JOB_EDIT_INTERVAL
            if not self._closed and self.text() != self._shown and self.link.usable:
                self._board.want(self)

    async def close(self) -> None:
        """No more progress: drop what is pending; an edit already on its way finishes first
        (the link sends one request at a time), so the result lands after it, not under it."""
        self._closed = True
        self._board.drop(self)
        if self._sending is not None:
            await asyncio.gather(self._sending, return_exceptions=True)


class _Channel:
    """One channel's traffic: what the bot sent there in the last CHANNEL_WINDOW (results and
    progress edits alike), and the jobs waiting for a progress edit, one per
    CHANNEL_EDIT_INTERVAL. Results wait for room in the window (``sends``; 0: they do not
    wait), in order; progress edits leave a quarter of it to results. It stays until a window
    has passed with nothing waiting, so no send is forgotten while it still counts."""

    def __init__(self, sends: int, on_idle: Callable[[], object]) -> None:
        self.sends = sends
        self.progress_sends = sends - sends // 4
        self.waiting: dict[ProgressMessage, None] = {}  # an insertion-ordered set
        self._sends: deque[float] = deque()
        self._last_edit = -math.inf
        self._wake = asyncio.Event()
        self._results = asyncio.Lock()
        self._on_idle = on_idle
        self._task = asyncio.create_task(self._run())

    def want(self, message: ProgressMessage) -> None:
        self.waiting[message] = None
        self._wake.set()

    def drop(self, message: ProgressMessage) -> None:
        self.waiting.pop(message, None)

    def _used(self, now: float) -> int:
        while self._sends and self._sends[0] <= now - CHANNEL_WINDOW:
            self._sends.popleft()
        return len(self._sends)

    def _room_at(self, now: float, sends: int) -> float:
        """When the window will have room for one more send with ``sends`` allowed in it."""
        used = self._used(now)
        if not self.sends or used < sends:
            return now
        return self._sends[used - sends] + CHANNEL_WINDOW

    async def result_turn(self) -> None:
        """Wait for room in the window for a result, then count it."""
        if not self.sends:
            return
        async with self._results:
            now = time.monotonic()
            start = self._room_at(now, self.sends)
            if start > now:  # progress edits cannot take that room meanwhile
                await asyncio.sleep(start - now)
            self._sends.append(time.monotonic())

    async def _run(self) -> None:
        while True:
            now = time.monotonic()
            if not self.waiting and not self._results.locked() and self._used(now) == 0:
                break
            ready = [m for m in self.waiting if not m.sending]
            turn = min(ready, key=lambda m: m.due, default=None)
            start = max(
                turn.due if turn else now + CHANNEL_WINDOW,
                self._last_edit + CHANNEL_EDIT_INTERVAL,
                self._room_at(now, self.progress_sends),
            )
            if turn is None or start > now:
                self._wake.clear()
                with contextlib.suppress(TimeoutError):  # woken early: a job wants an edit
                    await asyncio.wait_for(self._wake.wait(), start - now)
                continue
            del self.waiting[turn]
            self._last_edit = now
            if self.sends:
                self._sends.append(now)
            turn.send()
        self._on_idle()


class ProgressBoard:
    """Every channel's traffic, while the bot has sent or wants to send something there."""

    def __init__(self, channel_sends: int) -> None:
        self.channel_sends = channel_sends  # per CHANNEL_WINDOW; 0: results are not paced
        self._channels: dict[int, _Channel] = {}

    def track(
        self,
        link: InteractionLink,
        model: str,
        *,
        typical_seconds: float,
        parallel: int,
        private: bool,
    ) -> ProgressMessage:
        return ProgressMessage(self, link, model, typical_seconds=typical_seconds,
                               parallel=parallel, private=private)  # fmt: skip

    def _channel(self, channel_id: int) -> _Channel:
        channel = self._channels.get(channel_id)
        if channel is None:
            channel = self._channels[channel_id] = _Channel(
                self.channel_sends, lambda: self._channels.pop(channel_id, None)
            )
        return channel

    def want(self, message: ProgressMessage) -> None:
        self._channel(message.channel_id).want(message)

    def drop(self, message: ProgressMessage) -> None:
        channel = self._channels.get(message.channel_id)
        if channel is not None:
            channel.drop(message)

    async def result_turn(self, channel_id: int | None) -> None:
        """Wait until a result may be sent in this channel without meeting its limit."""
        await self._channel(channel_id or 0).result_turn()
