"""Small helpers every cog shares: who is asking, where, and whether they are an admin."""

from __future__ import annotations

import functools
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

import discord
from discord import app_commands
from discord.ext import commands

from bot.discord_bot import ImageBot, report_error
from bot.runtime import Runtime
from cogs.limits import clip as clip  # re-exported: the cogs' one way to shorten text

T = TypeVar("T")
ADMIN_REFUSAL = "Only server admins (Manage Server) can do this."


def bot_runtime(bot: commands.Bot) -> Runtime:
    """The runtime an extension's cogs are built with (``setup(bot)`` gets only the bot)."""
    if not isinstance(bot, ImageBot):
        raise TypeError("the cogs run only in an ImageBot")
    return bot.runtime


def runtime_of(interaction: discord.Interaction) -> Runtime:
    """The runtime of the bot that received this interaction: for buttons and checks, which
    discord.py builds from the interaction alone (cogs hold their own ``self.runtime``)."""
    client = interaction.client
    if not isinstance(client, commands.Bot):
        raise TypeError("the cogs run only in an ImageBot")
    return bot_runtime(client)


def guild_key(interaction: discord.Interaction) -> str:
    """The ledger's id for where this happens: the server id, or '' in DMs."""
    return str(interaction.guild_id) if interaction.guild_id else ""


def is_admin(interaction: discord.Interaction) -> bool:
    """Manage Server in this server (checked here, not only via default_permissions), or one
    of BOT_ADMIN_IDS anywhere."""
    if interaction.user.id in runtime_of(interaction).settings.admin_ids:
        return True
    permissions = interaction.permissions
    return bool(interaction.guild_id) and (permissions.manage_guild or permissions.administrator)


def admin_only() -> Callable[[T], T]:
    """A check for admin-only commands; the tree's on_error turns the refusal into a reply."""

    def predicate(interaction: discord.Interaction) -> bool:
        if not is_admin(interaction):
            raise app_commands.CheckFailure(ADMIN_REFUSAL)
        return True

    return app_commands.check(predicate)


def server_only() -> Callable[[T], T]:
    """Offered only in servers that installed the bot, whatever DISCORD_ALLOW_DMS and
    DISCORD_ALLOW_USER_INSTALL say, and checked here too."""
    contexts = app_commands.allowed_contexts(guilds=True, dms=False, private_channels=False)
    installs = app_commands.allowed_installs(guilds=True, users=False)
    check = guild_only_check()

    def decorate(item: T) -> T:
        return contexts(installs(check(item)))

    return decorate


def admin_commands() -> Callable[[T], T]:
    """Hidden by Discord from members without Manage Server (servers may override that, so
    each command keeps its own ``admin_only`` check) and offered only in servers."""
    hide = app_commands.default_permissions(manage_guild=True)
    where = server_only()

    def decorate(item: T) -> T:
        return hide(where(item))

    return decorate


def guild_only_check() -> Callable[[T], T]:
    def predicate(interaction: discord.Interaction) -> bool:
        if not interaction.guild_id:
            raise app_commands.CheckFailure("This command works in a server, not in DMs.")
        return True

    return app_commands.check(predicate)


def role_ids_of(user: discord.abc.User) -> tuple[str, ...]:
    """A member's roles in the server they act in (not @everyone: that is the server default),
    which pick their limits; nobody has roles in DMs."""
    if not isinstance(user, discord.Member):
        return ()
    return tuple(str(role.id) for role in user.roles if not role.is_default())


def channel_ids(interaction: discord.Interaction) -> tuple[str, ...]:
    """Where the interaction happens: its channel, and for a thread the channel it is in."""
    channel = interaction.channel
    parent = channel.parent_id if isinstance(channel, discord.Thread) else None
    return tuple(str(i) for i in (interaction.channel_id, parent) if i)


def age_restricted(interaction: discord.Interaction) -> bool:
    """Whether the interaction happens in an age-restricted channel (Discord's ``nsfw`` flag;
    a thread follows its parent). Never in DMs; an unknown channel counts as not restricted."""
    if not interaction.guild_id:
        return False
    is_nsfw = getattr(interaction.channel, "is_nsfw", None)
    return bool(is_nsfw()) if callable(is_nsfw) else False


async def answers_here(interaction: discord.Interaction) -> bool:
    """Whether generation and uploads answer in this channel (the server's allow list, if it
    has one); if not, says privately where they do. Call it before anything is deferred or
    charged."""
    allowed = await runtime_of(interaction).admin.channel_refusal(
        guild_key(interaction), channel_ids(interaction)
    )
    if allowed is None:
        return True
    await interaction.response.send_message(
        f"Image commands work in <#{allowed}> on this server.", ephemeral=True
    )
    return False


ButtonCallback = Callable[[Any, discord.Interaction], Coroutine[Any, Any, None]]


def guarded(callback: ButtonCallback) -> ButtonCallback:
    """Button callbacks are outside the command tree's on_error: report errors the same way."""

    @functools.wraps(callback)
    async def wrapper(self: Any, interaction: discord.Interaction) -> None:
        try:
            await callback(self, interaction)
        except Exception as error:
            await report_error(interaction, error)

    return wrapper
