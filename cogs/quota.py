"""/quota (your daily limits), /quota-admin (a member's and the server's limits) and
/blocklist (prompts a server refuses).

The blocklist sits beside the quotas because both are an admin's limits on what members can
do: quotas are for money and counts, the blocklist for words. Discord has no per-subcommand
permissions, so what members use (/quota) and what admins use (/quota-admin) are separate
commands; admin commands are hidden from members and keep their own check.
"""

from __future__ import annotations

import discord
from discord import app_commands
from discord.ext import commands

from bot.errors import InvalidRequest
from bot.money import format_usd, usd_to_micro
from bot.runtime import Runtime
from bot.server_admin import LimitRule
from cogs.common import (
    admin_commands,
    admin_only,
    bot_runtime,
    guild_key,
    role_ids_of,
    server_only,
)
from cogs.limits import CONTENT, TITLE, cut_lines, escape, fit_embeds, shown
from cogs.render import ACCENT


def micro(field: str, amount: float | None) -> int | None:
    """A dollar amount typed in Discord, as exact micro-dollars (via its decimal text)."""
    if amount is None:
        return None
    try:
        return usd_to_micro(f"{amount:.6f}")
    except ValueError:
        raise InvalidRequest(field, "Give an amount in dollars such as 0.05.") from None


async def quota_embed(
    runtime: Runtime, interaction: discord.Interaction, member: discord.abc.User
) -> discord.Embed:
    """A member's daily limits and what they and the server used today."""
    status = await runtime.admin.quota_status(
        guild_key(interaction), str(member.id), role_ids_of(member)
    )
    limits, used = status.limits, status.used
    embed = discord.Embed(title=shown(f"Quota of {member.display_name}", TITLE), colour=ACCENT)
    embed.add_field(name="Images today", value=f"{used.images} of {limits.user_images}")
    embed.add_field(
        name="Spent today",
        value=f"{format_usd(used.micro_usd)} of {format_usd(limits.user_micro_usd)}",
    )
    embed.add_field(
        name="Server today",
        value=f"{format_usd(status.guild_used.micro_usd)} of {format_usd(limits.guild_micro_usd)}",
    )
    embed.add_field(
        name="Rule",
        value=f"Images: {rule_text(status.images_rule)}\nDollars: {rule_text(status.usd_rule)}",
        inline=False,
    )
    embed.add_field(
        name="Content rules",
        value=content_rule_text(runtime, status.adult_content),
        inline=False,
    )
    embed.add_field(
        name="Resets", value=discord.utils.format_dt(status.resets_at, "R"), inline=False
    )
    return fit_embeds([embed])[0]


def content_rule_text(runtime: Runtime, adult_content: str) -> str:
    if runtime.settings.moderation_model is None:
        return "no content check on this bot (MODERATION_MODEL=off)"
    if adult_content == "age_restricted":
        return "adult content in age-restricted channels only; prompts elsewhere are checked"
    return "adult content off: every prompt is checked"


def rule_text(rule: LimitRule) -> str:
    """Which rule a limit comes from, in words (a role as a mention, which does not ping in
    an embed)."""
    if rule.source == "member":
        return "set for this member"
    if rule.source == "role":
        return f"the most generous of their roles, <@&{rule.role_id}>"
    return "this server's default" if rule.source == "server" else "the bot's default"


class Quota(commands.Cog):
    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime

    @app_commands.command(name="quota", description="Your daily limits and what is used today")
    @server_only()
    async def quota(self, interaction: discord.Interaction) -> None:
        embed = await quota_embed(self.runtime, interaction, interaction.user)
        await interaction.response.send_message(embed=embed, ephemeral=True)


@admin_commands()
class QuotaAdmin(
    commands.GroupCog, group_name="quota-admin", group_description="Daily limits (admins)"
):
    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime
        super().__init__()

    @app_commands.command(name="show", description="A member's daily limits and use today")
    @admin_only()
    async def show(self, interaction: discord.Interaction, member: discord.Member) -> None:
        embed = await quota_embed(self.runtime, interaction, member)
        await interaction.response.send_message(embed=embed, ephemeral=True)

    @app_commands.command(name="set-user", description="Set a member's daily limits (admins)")
    @app_commands.describe(daily_images="Images per day", daily_usd="Dollars per day, e.g. 0.05")
    @admin_only()
    async def set_user(
        self,
        interaction: discord.Interaction,
        member: discord.Member,
        daily_images: app_commands.Range[int, 0, 100_000] | None = None,
        daily_usd: app_commands.Range[float, 0.0, 10_000.0] | None = None,
    ) -> None:
        await self.runtime.admin.set_user_quota(
            guild_id=guild_key(interaction),
            user_id=str(member.id),
            daily_images=daily_images,
            daily_micro_usd=micro("daily_usd", daily_usd),
        )
        await interaction.response.send_message(
            f"Updated {member.mention}'s daily limits.", ephemeral=True
        )

    @app_commands.command(name="set-server", description="Set this server's limits (admins)")
    @app_commands.describe(
        daily_usd="Dollars per day for the whole server",
        user_daily_images="Default images per member per day",
        user_daily_usd="Default dollars per member per day",
    )
    @admin_only()
    async def set_server(
        self,
        interaction: discord.Interaction,
        daily_usd: app_commands.Range[float, 0.0, 100_000.0] | None = None,
        user_daily_images: app_commands.Range[int, 0, 100_000] | None = None,
        user_daily_usd: app_commands.Range[float, 0.0, 10_000.0] | None = None,
    ) -> None:
        await self.runtime.admin.set_guild_quota(
            guild_id=guild_key(interaction),
            daily_micro_usd=micro("daily_usd", daily_usd),
            user_daily_images=user_daily_images,
            user_daily_micro_usd=micro("user_daily_usd", user_daily_usd),
        )
        await interaction.response.send_message("Updated this server's limits.", ephemeral=True)

    @app_commands.command(name="set-role", description="Set daily limits for a role (admins)")
    @app_commands.describe(
        daily_images="Images per day for members with this role",
        daily_usd="Dollars per day for members with this role, e.g. 0.05",
    )
    @admin_only()
    async def set_role(
        self,
        interaction: discord.Interaction,
        role: discord.Role,
        daily_images: app_commands.Range[int, 0, 100_000] | None = None,
        daily_usd: app_commands.Range[float, 0.0, 10_000.0] | None = None,
    ) -> None:
        if role.is_default():
            raise InvalidRequest("role", "For everyone, use /quota-admin set-server.")
        await self.runtime.admin.set_role_quota(
            guild_id=guild_key(interaction),
            role_id=str(role.id),
            daily_images=daily_images,
            daily_micro_usd=micro("daily_usd", daily_usd),
        )
        await interaction.response.send_message(
            f"Updated the daily limits of {role.mention}. A member with several roles gets the "
            "most generous; a member's own limits come first.",
            ephemeral=True,
            allowed_mentions=discord.AllowedMentions.none(),
        )

    @app_commands.command(name="clear-role", description="Remove a role's daily limits (admins)")
    @admin_only()
    async def clear_role(self, interaction: discord.Interaction, role: discord.Role) -> None:
        await self.runtime.admin.clear_role_quota(
            guild_id=guild_key(interaction), role_id=str(role.id)
        )
        await interaction.response.send_message(
            f"{role.mention} has no limits of its own any more.",
            ephemeral=True,
            allowed_mentions=discord.AllowedMentions.none(),
        )

    @app_commands.command(
        name="reset-user", description="Clear a member's usage for today (admins)"
    )
    @admin_only()
    async def reset_user(self, interaction: discord.Interaction, member: discord.Member) -> None:
        await self.runtime.admin.reset_user(
            guild_id=guild_key(interaction),
            user_id=str(member.id),
            reset_by=str(interaction.user.id),
        )
        await interaction.response.send_message(
            f"Cleared {member.mention}'s usage for today (their charges stay on record).",
            ephemeral=True,
        )


@admin_commands()
class Blocklist(
    commands.GroupCog, group_name="blocklist", group_description="Prompts this server refuses"
):
    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime
        super().__init__()

    @app_commands.command(name="add", description="Refuse prompts containing this word or phrase")
    @admin_only()
    async def add(
        self, interaction: discord.Interaction, term: app_commands.Range[str, 1, 100]
    ) -> None:
        terms = await self.runtime.admin.block(guild_key(interaction), term)
        await interaction.response.send_message(
            f"Blocked. The list has {len(terms)} term(s).", ephemeral=True
        )

    @app_commands.command(name="remove", description="Allow a blocked term again")
    @admin_only()
    async def remove(self, interaction: discord.Interaction, term: str) -> None:
        terms = await self.runtime.admin.unblock(guild_key(interaction), term)
        await interaction.response.send_message(
            f"Removed. The list has {len(terms)} term(s).", ephemeral=True
        )

    @app_commands.command(name="list", description="The blocked terms")
    @admin_only()
    async def list_(self, interaction: discord.Interaction) -> None:
        terms = await self.runtime.admin.blocklist(guild_key(interaction))
        text = cut_lines([escape(t) for t in terms], CONTENT, ", ") or "Nothing is blocked."
        await interaction.response.send_message(text, ephemeral=True)


async def setup(bot: commands.Bot) -> None:
    runtime = bot_runtime(bot)
    await bot.add_cog(Quota(runtime))
    await bot.add_cog(QuotaAdmin(runtime))
    await bot.add_cog(Blocklist(runtime))
