"""/templates: a server's saved styles ({prompt} marks where the user's prompt goes)."""

from __future__ import annotations

import discord
from discord import app_commands
from discord.ext import commands

from bot.requests import Template
from bot.runtime import Runtime
from bot.validation import ASPECT_RATIOS
from cogs.common import bot_runtime, guild_key, is_admin, server_only
from cogs.limits import DESCRIPTION, FIELD_VALUE, TITLE, cut_lines, escape, fit_choices, fit_embeds
from cogs.limits import shown as shown_text
from cogs.render import ACCENT


def template_embed(template: Template) -> discord.Embed:
    embed = discord.Embed(title=shown_text(f"Template: {template.name}", TITLE), colour=ACCENT)
    embed.add_field(name="Prompt", value=shown_text(template.prompt, FIELD_VALUE), inline=False)
    for name, value in (
        ("Model", template.model),
        ("Negative prompt", template.negative_prompt),
        ("Aspect ratio", template.aspect_ratio),
        ("Steps", template.steps),
    ):
        if value is not None:
            embed.add_field(name=name, value=shown_text(str(value), FIELD_VALUE))
    embed.set_footer(text=f"{template.id} · made by {template.created_by}")
    return fit_embeds([embed])[0]


@server_only()
class Templates(commands.GroupCog, group_name="templates", group_description="Saved styles"):
    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime
        super().__init__()

    @app_commands.command(name="create", description="Save a style for this server")
    @app_commands.describe(
        name="1-32 characters, unique in this server",
        prompt="Use {prompt} where the user's prompt goes; otherwise it is appended",
    )
    @app_commands.choices(
        aspect_ratio=[app_commands.Choice(name=r, value=r) for r in ASPECT_RATIOS]
    )
    async def create(
        self,
        interaction: discord.Interaction,
        name: app_commands.Range[str, 1, 32],
        prompt: app_commands.Range[str, 1, 2048],
        model: str | None = None,
        negative_prompt: str | None = None,
        aspect_ratio: str | None = None,
        steps: app_commands.Range[int, 1, 100] | None = None,
    ) -> None:
        template = await self.runtime.admin.create_template(
            guild_id=guild_key(interaction),
            user_id=str(interaction.user.id),
            name=name,
            prompt=prompt,
            model=model,
            negative_prompt=negative_prompt,
            aspect_ratio=aspect_ratio,
            steps=steps,
        )
        await interaction.response.send_message(
            f"Saved template **{escape(template.name)}**.",
            embed=template_embed(template),
            ephemeral=True,
        )

    @app_commands.command(name="list", description="This server's templates")
    async def list_(self, interaction: discord.Interaction) -> None:
        templates = await self.runtime.admin.templates(guild_key(interaction))
        if not templates:
            await interaction.response.send_message(
                "No templates yet: an admin or anyone can add one with /templates create.",
                ephemeral=True,
            )
            return
        lines = [f"**{escape(t.name)}**: {shown_text(t.prompt, 80)}" for t in templates]
        embed = discord.Embed(
            title="Templates", description=cut_lines(lines, DESCRIPTION), colour=ACCENT
        )
        await interaction.response.send_message(embed=embed, ephemeral=True)

    @app_commands.command(name="show", description="Show one template")
    async def show(self, interaction: discord.Interaction, name: str) -> None:
        template = await self.runtime.admin.template(guild_key(interaction), name)
        await interaction.response.send_message(embed=template_embed(template), ephemeral=True)

    @app_commands.command(name="delete", description="Delete a template (its creator or an admin)")
    async def delete(self, interaction: discord.Interaction, name: str) -> None:
        template = await self.runtime.admin.delete_template(
            guild_id=guild_key(interaction),
            name=name,
            user_id=str(interaction.user.id),
            is_admin=is_admin(interaction),
        )
        await interaction.response.send_message(
            f"Deleted template **{escape(template.name)}**.", ephemeral=True
        )

    @show.autocomplete("name")
    @delete.autocomplete("name")
    async def name_choices(
        self, interaction: discord.Interaction, current: str
    ) -> list[app_commands.Choice[str]]:
        templates = await self.runtime.admin.templates(guild_key(interaction), current)
        return fit_choices([app_commands.Choice(name=t.name, value=t.name) for t in templates])


async def setup(bot: commands.Bot) -> None:
    runtime = bot_runtime(bot)
    await bot.add_cog(Templates(runtime))
