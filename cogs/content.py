"""/content adult|show (admins): the server's content rule.

``off`` (the default): every prompt is checked by the moderation model before anything is
charged. ``age-restricted channels only``: in channels Discord marks age-restricted (and their
threads) prompts are not checked; everywhere else they still are.
"""

from __future__ import annotations

import discord
from discord import app_commands
from discord.ext import commands

from bot.runtime import Runtime
from cogs.common import admin_commands, admin_only, bot_runtime, guild_key

RULE_TEXT = {
    "off": "Adult content: **off**. Every prompt is checked by the content rules.",
    "age_restricted": (
        "Adult content: **age-restricted channels only**. Prompts in age-restricted channels "
        "(and their threads) are not checked; everywhere else they are."
    ),
}


def rule_text(rule: str, checks: bool) -> str:
    """The rule in words, and a warning when the bot has no moderation model to enforce it."""
    text = RULE_TEXT.get(rule, RULE_TEXT["off"])
    if not checks:
        text += "\n⚠️ This bot has no moderation model (MODERATION_MODEL=off): nothing is checked."
    return text


@admin_commands()
class Content(commands.GroupCog, group_name="content", group_description="Content rules"):
    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime
        super().__init__()

    @property
    def checks(self) -> bool:
        return self.runtime.settings.moderation_model is not None

    @app_commands.command(name="adult", description="Where adult content is allowed (admins)")
    @app_commands.describe(setting="off: every prompt is checked")
    @app_commands.choices(
        setting=[
            app_commands.Choice(name="off", value="off"),
            app_commands.Choice(name="age-restricted channels only", value="age_restricted"),
        ]
    )
    @admin_only()
    async def adult(self, interaction: discord.Interaction, setting: str) -> None:
        await self.runtime.admin.set_adult_content(guild_key(interaction), setting)
        await interaction.response.send_message(rule_text(setting, self.checks), ephemeral=True)

    @app_commands.command(name="show", description="This server's content rule (admins)")
    @admin_only()
    async def show(self, interaction: discord.Interaction) -> None:
        rule = await self.runtime.admin.adult_content(guild_key(interaction))
        await interaction.response.send_message(rule_text(rule, self.checks), ephemeral=True)


async def setup(bot: commands.Bot) -> None:
    await bot.add_cog(Content(bot_runtime(bot)))
