"""Getting a paid result in front of its user, or not charging for it.

A result counts as delivered when Discord accepted a message that shows it. The interaction
that asked is tried first; when it can no longer carry the result (token expired or unknown,
"thinking" message deleted, a refusal, a 429 that outlasted discord.py's retries) the result
goes to the channel, mentioning only the requester, or by DM when the channel refuses. A
private result never goes to the channel. When every way fails the service refunds the job.

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
        async with self._lock:
            if not self.usable:
                raise LinkClosed
            try:
                await self.interaction.edit_original_response(**fields)
            except discord.HTTPException as error:
                if error.status in (401, 404) or error.code in DEAD_TOKEN_CODES:
                    self.dead, self.death = True, describe(error)
                    self.interaction.extras[DEAD_LINK] = True
                raise


@dataclass
class ResultMessage:
    """What shows a result, rebuilt for each attempt (a sent discord.File is used up)."""

    notes: list[str]
    embeds: list[discord.Embed]
    files: list[tuple[str, bytes]]
    view: Callable[[], discord.ui.View]
    tried: list[str] = field(default_factory=list)  # "way: why it failed", for the log

    def attachments(self) -> list[discord.File]:
        return [discord.File(io.BytesIO(data), filename=name) for name, data in self.files]

    def fields(self, content: str | None) -> dict[str, Any]:
        return {"content": content, "embeds": self.embeds, "view": self.view()}


def only_mention(user: discord.abc.User) -> discord.AllowedMentions:
    """Ping this user and nobody else, whatever the message says."""
    return discord.AllowedMentions(everyone=False, users=[user], roles=False, replied_user=False)


async def deliver(
    link: InteractionLink,
    message: ResultMessage,
    *,
    private: bool,
    channel_turn: Callable[[], Awaitable[None]],
) -> str:
    """Show the result one way or another; the way it went (``DELIVERY_WAYS``), or
    ``undelivered`` when Discord refused every way. ``channel_turn`` waits until the channel
    has room for one more message (the reply is in the channel too)."""
    interaction = link.interaction
    notes = "\n".join(message.notes) or None
    try:
        if link.usable:
            await channel_turn()
        await link.edit(**message.fields(notes), attachments=message.attachments())
        return "interaction"
    except LinkClosed:
        message.tried.append(f"interaction: {link.why_unusable()}")
    except DeliveryError as error:
        message.tried.append(f"interaction: {describe(error)}")
    user, channel = interaction.user, interaction.channel
    in_a_server = interaction.guild_id is not None
    if not private and in_a_server and isinstance(channel, discord.abc.Messageable):
        text = "\n".join([f"{user.mention}, here is your result.", *message.notes])
        try:
            await channel_turn()
            await channel.send(**message.fields(text), files=message.attachments(),
                               allowed_mentions=only_mention(user))  # fmt: skip
            return "channel"
        except DeliveryError as error:
            message.tried.append(f"channel: {describe(error)}")
    try:
        await user.send(**message.fields(notes), files=message.attachments())
        return "dm"
    except DeliveryError as error:
        message.tried.append(f"dm: {describe(error)}")
    return "undelivered"


def late_note(private: bool) -> str:
    """What the reply says when the job will outlast the token: where the result will go."""
    if private:
        return ("⏰ This will take longer than Discord lets me edit this message: "
                "I'll send the result to you by DM.")  # fmt: skip
    return ("⏰ This will take longer than Discord lets me edit this message: "
            "I'll post the result in this channel and mention you.")  # fmt: skip
