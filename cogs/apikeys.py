"""/apikey: keys for the HTTP API, tied to you (and to this server's quotas when made here)."""

from __future__ import annotations

import discord
from discord import app_commands
from discord.ext import commands

from bot.runtime import Runtime
from cogs.common import bot_runtime, guild_key, is_admin
from cogs.limits import CONTENT, TITLE, cut_lines, escape, fit_choices, fit_embeds, shown
from cogs.render import ACCENT


class ApiKeysCog(commands.GroupCog, group_name="apikey", group_description="HTTP API keys"):
    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime
        super().__init__()

    @app_commands.command(name="create", description="Make an API key (shown once, only to you)")
    async def create(
        self, interaction: discord.Interaction, name: app_commands.Range[str, 1, 50] = "API key"
    ) -> None:
        runtime = self.runtime
        key, plaintext = await runtime.keys.create(
            user_id=str(interaction.user.id), guild_id=guild_key(interaction), name=name
        )
        where = "this server's" if key.guild_id else "your"
        embed = discord.Embed(title=shown(f"API key: {key.name}", TITLE), colour=ACCENT)
        embed.add_field(name="Key", value=f"||`{plaintext}`||", inline=False)
        embed.add_field(name="Webhook signing secret", value=f"||`{key.webhook_secret}`||",
                        inline=False)  # fmt: skip
        embed.add_field(
            name="Use",
            value=f"`Authorization: Bearer <key>` on {runtime.settings.public_base_url}/api/… "
            f"Generations count against {where} quotas. This is the only time the key is shown.",
            inline=False,
        )
        embed.set_footer(text=key.id)
        await interaction.response.send_message(embed=fit_embeds([embed])[0], ephemeral=True)

    @app_commands.command(name="list", description="Your API keys")
    async def list_(self, interaction: discord.Interaction) -> None:
        keys = await self.runtime.keys.list(str(interaction.user.id))
        if not keys:
            await interaction.response.send_message("You have no API keys.", ephemeral=True)
            return
        lines = [
            f"`{k.id}` **{shown(k.name, 40)}** `{k.hint}` · made {k.created_at[:10]}"
            + (" · revoked" if k.revoked_at else "")
            for k in keys
        ]
        await interaction.response.send_message(cut_lines(lines, CONTENT), ephemeral=True)

    @app_commands.command(name="revoke", description="Revoke one of your API keys")
    async def revoke(self, interaction: discord.Interaction, key_id: str) -> None:
        key = await self.runtime.keys.revoke(
            key_id, requester_id=str(interaction.user.id), is_admin=is_admin(interaction)
        )
        await interaction.response.send_message(
            f"Revoked **{escape(key.name)}** (`{key.hint}`).", ephemeral=True
        )

    @revoke.autocomplete("key_id")
    async def key_choices(
        self, interaction: discord.Interaction, current: str
    ) -> list[app_commands.Choice[str]]:
        keys = await self.runtime.keys.list(str(interaction.user.id))
        return fit_choices([
            app_commands.Choice(name=f"{k.name} · {k.hint}", value=k.id)
            for k in keys
            if not k.revoked_at and current.casefold() in f"{k.name} {k.id}".casefold()
        ])  # fmt: skip


async def setup(bot: commands.Bot) -> None:
    runtime = bot_runtime(bot)
    await bot.add_cog(ApiKeysCog(runtime))
