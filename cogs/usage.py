"""/usage (what you spent) and /usage-admin (a member or the whole server: today, this month,
the last 30 days). Separate commands because Discord has no per-subcommand permissions: the
admin one is hidden from members and keeps its own check."""

from __future__ import annotations

import io

import discord
from discord import app_commands
from discord.ext import commands

from bot.catalog import Catalog
from bot.money import format_usd
from bot.requests import UsageReport
from bot.runtime import Runtime
from cogs.common import admin_commands, admin_only, bot_runtime, guild_key, role_ids_of
from cogs.limits import FIELD_VALUE, FILE_BYTES, TITLE, cut_lines, fit_embeds, shown
from cogs.render import ACCENT, model_name


def _by_model(catalog: Catalog, report: UsageReport) -> str:
    lines = [
        f"{model_name(catalog, model)}: {images} images, {format_usd(cost)}"
        for model, (images, cost) in report.by_model.items()
    ]
    return cut_lines(lines, FIELD_VALUE) or "—"


async def personal_embed(
    runtime: Runtime, interaction: discord.Interaction, member: discord.abc.User
) -> discord.Embed:
    guild, user = guild_key(interaction), str(member.id)
    usage = await runtime.service.personal_usage(guild, user)
    status = await runtime.admin.quota_status(guild, user, role_ids_of(member))
    embed = discord.Embed(title=shown(f"Usage of {member.display_name}", TITLE), colour=ACCENT)
    embed.add_field(
        name="Today (UTC)",
        value=f"{usage.today.total_images} images, {format_usd(usage.today.total_micro_usd)}",
    )
    embed.add_field(
        name="This month",
        value=f"{usage.month.total_images} images, {format_usd(usage.month.total_micro_usd)}",
    )
    embed.add_field(
        name="Left today",
        value=f"{status.left.images} of {status.limits.user_images} images, "
        f"{format_usd(status.left.micro_usd)} "
        f"of {format_usd(status.limits.user_micro_usd)}; resets "
        f"{discord.utils.format_dt(status.resets_at, 'R')}",
        inline=False,
    )
    embed.add_field(name="This month by model", value=_by_model(runtime.catalog, usage.month),
                    inline=False)  # fmt: skip
    return fit_embeds([embed])[0]


class Usage(commands.Cog):
    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime

    @app_commands.command(name="usage", description="Your images and spending")
    async def usage(self, interaction: discord.Interaction) -> None:
        embed = await personal_embed(self.runtime, interaction, interaction.user)
        await interaction.response.send_message(embed=embed, ephemeral=True)


@admin_commands()
class UsageAdmin(
    commands.GroupCog, group_name="usage-admin", group_description="Spending (admins)"
):
    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime
        super().__init__()

    @app_commands.command(name="user", description="A member's images and spending")
    @admin_only()
    async def user(self, interaction: discord.Interaction, member: discord.Member) -> None:
        embed = await personal_embed(self.runtime, interaction, member)
        await interaction.response.send_message(embed=embed, ephemeral=True)

    @app_commands.command(name="server", description="The server's spending, chart and CSV")
    @admin_only()
    async def server(self, interaction: discord.Interaction) -> None:
        await interaction.response.defer(thinking=True, ephemeral=True)
        usage = await self.runtime.service.server_usage(guild_key(interaction))
        report = usage.report
        embed = discord.Embed(
            title=f"Server usage, {usage.days[0]} to {usage.days[-1]} (UTC)", colour=ACCENT
        )
        embed.add_field(name="Total cost", value=format_usd(report.total_micro_usd))
        embed.add_field(name="Images", value=str(report.total_images))
        embed.add_field(name="Average per image", value=format_usd(report.average_micro_usd))
        top = [
            f"<@{u.user_id}>: {u.images} images, {format_usd(u.micro_usd)}"
            for u in report.users[:10]
        ]
        embed.add_field(name="Top users", value=cut_lines(top, FIELD_VALUE) or "—", inline=False)
        by_model = _by_model(self.runtime.catalog, report)
        embed.add_field(name="By model", value=by_model, inline=False)
        embed.set_image(url="attachment://usage.png")
        files = [discord.File(io.BytesIO(usage.chart_png), filename="usage.png")]
        if len(usage.csv_bytes) <= FILE_BYTES:
            files.append(discord.File(io.BytesIO(usage.csv_bytes), filename="usage.csv"))
        else:  # more than Discord takes in one file
            embed.add_field(name="CSV", value="Over 10 MB: too large to attach in Discord.")
        await interaction.edit_original_response(embed=fit_embeds([embed])[0], attachments=files)


async def setup(bot: commands.Bot) -> None:
    runtime = bot_runtime(bot)
    await bot.add_cog(Usage(runtime))
    await bot.add_cog(UsageAdmin(runtime))
