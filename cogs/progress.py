"""Progress edits of running jobs, coalesced per job and paced per channel.

Discord limits edits per interaction token and, undocumented, per channel: 50 jobs in one
channel each editing every two seconds would meet both. So each job keeps only its latest state
(stale intermediate states are never sent), shows nothing before ``FIRST_EDIT_DELAY`` (a quick
job goes straight to its result), edits at most every ``JOB_EDIT_INTERVAL``, and the jobs of one
channel share one edit every ``CHANNEL_EDIT_INTERVAL``, the job waiting longest first. Closing
a job's progress drops its pending edit, so the result is never queued behind one.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import Callable
from datetime import timedelta

import discord

from bot.requests import Progress
from cogs.delivery import DeliveryError, InteractionLink, LinkClosed, describe, late_note
from cogs.render import progress_text

log = logging.getLogger(__name__)

FIRST_EDIT_DELAY = 2.0
JOB_EDIT_INTERVAL = 2.0
CHANNEL_EDIT_INTERVAL = 1.0


class ProgressMessage:
    """One job's progress on its interaction's reply; ``update`` is the service's callback."""

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
        text = self.text()
        try:
            if text is not None and text != self._shown and not self._closed:
                self._shown = text
                await self.link.edit(content=text)
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


class _ChannelPacer:
    """The jobs of one channel waiting for an edit, served one per CHANNEL_EDIT_INTERVAL.

    It stays until an interval has passed with nobody waiting, so a new pacer for the channel
    can never send within an interval of this one's last edit."""

    def __init__(self, on_idle: Callable[[], object]) -> None:
        self.waiting: dict[ProgressMessage, None] = {}  # an insertion-ordered set
        self._last_edit = -math.inf
        self._wake = asyncio.Event()
        self._on_idle = on_idle
        self._task = asyncio.create_task(self._run())

    def want(self, message: ProgressMessage) -> None:
        self.waiting[message] = None
        self._wake.set()

    def drop(self, message: ProgressMessage) -> None:
        self.waiting.pop(message, None)

    async def _run(self) -> None:
        while True:
            now = time.monotonic()
            start = self._last_edit + CHANNEL_EDIT_INTERVAL
            if not self.waiting and now >= start:
                break
            ready = [m for m in self.waiting if not m.sending]
            turn = min(ready, key=lambda m: m.due, default=None)
            start = max(start, turn.due if turn else now + JOB_EDIT_INTERVAL)
            if turn is None or start > now:
                self._wake.clear()
                with contextlib.suppress(TimeoutError):  # woken early: a job wants an edit
                    await asyncio.wait_for(self._wake.wait(), start - now)
                continue
            del self.waiting[turn]
            self._last_edit = now
            turn.send()
        self._on_idle()


class ProgressBoard:
    """Every channel's pacer, while it has jobs waiting for an edit."""

    def __init__(self) -> None:
        self._channels: dict[int, _ChannelPacer] = {}

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

    def want(self, message: ProgressMessage) -> None:
        pacer = self._channels.get(message.channel_id)
        if pacer is None:
            channel_id = message.channel_id
            pacer = self._channels[channel_id] = _ChannelPacer(
                lambda: self._channels.pop(channel_id, None)
            )
        pacer.want(message)

    def drop(self, message: ProgressMessage) -> None:
        pacer = self._channels.get(message.channel_id)
        if pacer is not None:
            pacer.drop(message)
