"""/channels allow|deny|list (admins): the channels where generation and uploads answer.

With no channel listed they answer everywhere; once a server lists one, /imagine, /upload and
the image buttons answer only in listed channels and their threads, and elsewhere reply
privately with where to go (``cogs.common.answers_here``), before anything is charged.
"""

from __future__ import annotations

import discord
from discord import app_commands
from discord.ext import commands

from bot.runtime import Runtime
from cogs.common import admin_commands, admin_only, bot_runtime, guild_key
from cogs.limits import CONTENT, cut_lines


def mentions(channel_ids: list[str]) -> str:
    return cut_lines([f"<#{c}>" for c in channel_ids], CONTENT, ", ")


@admin_commands()
class Channels(
    commands.GroupCog, group_name="channels", group_description="Where image commands answer"
):
    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime
        super().__init__()

    @app_commands.command(name="allow", description="Let image commands answer in a channel")
    @admin_only()
    async def allow(self, interaction: discord.Interaction, channel: discord.TextChannel) -> None:
        allowed = await self.runtime.admin.allow_channel(guild_key(interaction), str(channel.id))
        await interaction.response.send_message(
            f"Image commands now answer only in {mentions(allowed)} (and their threads).",
            ephemeral=True,
        )

    @app_commands.command(name="deny", description="Take a channel off the allow list")
    @admin_only()
    async def deny(self, interaction: discord.Interaction, channel: discord.TextChannel) -> None:
        allowed = await self.runtime.admin.deny_channel(guild_key(interaction), str(channel.id))
        where = f"only in {mentions(allowed)}" if allowed else "in every channel again"
        await interaction.response.send_message(
            f"Image commands now answer {where}.", ephemeral=True
        )

    @app_commands.command(name="list", description="The channels image commands answer in")
    @admin_only()
    async def list_(self, interaction: discord.Interaction) -> None:
        allowed = await self.runtime.admin.allowed_channels(guild_key(interaction))
        text = mentions(allowed) if allowed else "Every channel (no allow list)."
        await interaction.response.send_message(text, ephemeral=True)


async def setup(bot: commands.Bot) -> None:
    await bot.add_cog(Channels(bot_runtime(bot)))
