"""Getting a paid result in front of its user, or not charging for it.

A result counts as delivered when Discord accepted a message that shows it. The interaction
that asked is tried first; when it can no longer carry the result (token expired or unknown,
"thinking" message deleted, a refusal, a 429 that outlasted discord.py's retries) the result
goes to the channel, mentioning only the requester, or by DM when the channel refuses. A
private result never goes to the channel. A result set ``aside`` (its job was cancelled while
generating) leaves the public reply alone: an ephemeral followup on the owner's interaction, or
a DM. When every way fails the service refunds the job.

Discord accepts an interaction token for 15 minutes from the interaction's creation; after
that, or once its message is gone, every call on it fails and counts toward the 10,000 invalid
requests per 10 minutes that get an IP banned. ``InteractionLink`` is the one door every edit of
an interaction's reply goes through: it stops at the deadline and at the first 401/404.
"""

from __future__ import annotations

import asyncio
import io
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import aiohttp
import discord

from bot.discord_bot import DEAD_LINK

log = logging.getLogger(__name__)

TOKEN_LIFETIME = timedelta(minutes=15)
SAFETY_MARGIN = timedelta(seconds=10)  # no call on a token this close to its end
# Invalid webhook token (expired), unknown webhook, unknown message (deleted).
DEAD_TOKEN_CODES = frozenset({50027, 10015, 10008})
# What a refused or failed send raises (a lost connection included; TimeoutError is an OSError).
DeliveryError = (discord.HTTPException, discord.RateLimited, aiohttp.ClientError, OSError)


class LinkClosed(Exception):
    """The interaction's token is past its deadline or dead: no call was made."""


def describe(error: BaseException) -> str:
    """An error as a short log phrase: status and code, never a URL (it holds the token)."""
    if isinstance(error, discord.HTTPException):
        return f"{error.status} {error.code}"
    if isinstance(error, discord.RateLimited):
        return f"rate limited for {error.retry_after:.0f}s"
    return type(error).__name__


class InteractionLink:
    """One interaction's token: its deadline, whether it still works, and every edit of its
    reply, one at a time (so the final result never races a progress edit)."""

    def __init__(self, interaction: discord.Interaction, lifetime: timedelta) -> None:
        self.interaction = interaction
        self.deadline = interaction.created_at + lifetime
        self.dead = False
        self.death: str | None = None  # the answer that killed the token, for the log
        self._lock = asyncio.Lock()

    @classmethod
    def of(cls, interaction: discord.Interaction) -> InteractionLink:
        """The interaction's one link (created on first use)."""
        link = interaction.extras.get(cls)
        if not isinstance(link, InteractionLink):
            link = interaction.extras[cls] = cls(interaction, TOKEN_LIFETIME)
        return link

    def why_unusable(self) -> str:
        return f"token dead ({self.death})" if self.dead else "token at the end of its life"

    def usable_until(self) -> datetime:
        return self.deadline - SAFETY_MARGIN

    @property
    def usable(self) -> bool:
        return not self.dead and discord.utils.utcnow() < self.usable_until()

    async def edit(self, **fields: Any) -> None:
        """Edit the reply. LinkClosed without a call once the token is unusable; the first
        401/404 closes the link for good (and for the error reporter, via ``extras``)."""
        await self._call(lambda: self.interaction.edit_original_response(**fields))

    async def follow(self, **fields: Any) -> None:
        """Send a followup message on the token, under the same rules as ``edit``."""
        await self._call(lambda: self.interaction.followup.send(**fields))

    async def _call(self, send: Callable[[], Awaitable[Any]]) -> None:
        async with self._lock:
            if not self.usable:
                raise LinkClosed
            try:
                await send()
            except discord.HTTPException as error:
                if error.status in (401, 404) or error.code in DEAD_TOKEN_CODES:
                    self.dead, self.death = True, describe(error)
                    self.interaction.extras[DEAD_LINK] = True
                raise


@dataclass
class MessagePart:
    """One message of a result: its embeds, its files (as bytes: a sent discord.File is used
    up, and each way of delivery sends them anew) and a factory of its buttons."""

    embeds: list[discord.Embed]
    files: list[tuple[str, bytes]]
    view: Callable[[], discord.ui.View]

    def attachments(self) -> list[discord.File]:
        return [discord.File(io.BytesIO(data), filename=name) for name, data in self.files]


@dataclass
class ResultMessage:
    """A result as messages: usually one part; more when its files exceed one request."""

    notes: list[str]
    parts: list[MessagePart]
    tried: list[str] = field(default_factory=list)  # "way: why it failed", for the log


def only_mention(user: discord.abc.User) -> discord.AllowedMentions:
    """Ping this user and nobody else, whatever the message says."""
    return discord.AllowedMentions(everyone=False, users=[user], roles=False, replied_user=False)


WAYS = ("interaction", "channel", "dm")  # in the order they are tried


async def deliver(
    link: InteractionLink,
    message: ResultMessage,
    *,
    private: bool,
    channel_turn: Callable[[], Awaitable[None]],
    aside: bool = False,
) -> str:
    """Show every part of the result one way or another; the way it went (the last way any
    part needed, from ``WAYS``), or ``undelivered`` when Discord refused every way for a part.
    ``channel_turn`` waits until the channel has room for one more message (the reply is in
    the channel too). A private result is never posted in the channel."""
    way = WAYS[0]
    for index, part in enumerate(message.parts):
        for candidate in WAYS[WAYS.index(way) :]:  # a way that failed is not tried again
            try:
                if await _send(candidate, link, message, index, part, private or aside,
                               channel_turn, aside):  # fmt: skip
                    way = candidate
                    break
            except LinkClosed:
                message.tried.append(f"interaction: {link.why_unusable()}")
            except DeliveryError as error:
                message.tried.append(f"{candidate}: {describe(error)}")
        else:
            return "undelivered"
    return way


async def _send(
    way: str,
    link: InteractionLink,
    message: ResultMessage,
    index: int,
    part: MessagePart,
    private: bool,
    channel_turn: Callable[[], Awaitable[None]],
    aside: bool = False,
) -> bool:
    """Send one part one way; False if that way does not apply (no channel, or private). Set
    ``aside``, even the first part is an ephemeral followup instead of the reply's edit."""
    interaction, notes = link.interaction, message.notes if index == 0 else []
    embeds, files, view = part.embeds, part.attachments(), part.view()
    if way == "interaction":
        if link.usable:
            await channel_turn()
        if index == 0 and not aside:
            await link.edit(content="\n".join(notes) or None, embeds=embeds, attachments=files,
                            view=view)  # fmt: skip
        elif index == 0:
            await link.follow(content="\n".join(notes) or None, embeds=embeds, files=files,
                              view=view, ephemeral=True)  # fmt: skip
        else:
            await link.follow(embeds=embeds, files=files, view=view, ephemeral=private)
        return True
    user, channel = interaction.user, interaction.channel
    if way == "channel":
        in_a_server = interaction.guild_id is not None
        if private or not in_a_server or not isinstance(channel, discord.abc.Messageable):
            return False
        await channel_turn()
        text = "\n".join([f"{user.mention}, here is your result.", *notes])
        await channel.send(text, embeds=embeds, files=files, view=view,
                           allowed_mentions=only_mention(user))  # fmt: skip
        return True
    await user.send("\n".join(notes) or None, embeds=embeds, files=files, view=view)
    return True


def late_note(private: bool) -> str:
    """What the reply says when the job will outlast the token: where the result will go."""
    if private:
        return ("⏰ This will take longer than Discord lets me edit this message: "
                "I'll send the result to you by DM.")  # fmt: skip
    return ("⏰ This will take longer than Discord lets me edit this message: "
            "I'll post the result in this channel and mention you.")  # fmt: skip
