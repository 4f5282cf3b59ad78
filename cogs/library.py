"""/upload (host an image, attached or from a URL, usable as a starting image) and /models
(the catalog). An upload by URL takes the same path as ``POST /api/upload`` with a URL
(``ImageLibrary.upload_from_url``: public addresses only, bounded size)."""

from __future__ import annotations

import discord
from discord import app_commands
from discord.ext import commands

from bot.errors import InvalidRequest
from bot.money import format_neurons, format_usd
from bot.runtime import Runtime
from cogs.buttons import image_buttons
from cogs.common import answers_here, bot_runtime, guild_key, role_ids_of
from cogs.limits import FIELDS, fit_embeds
from cogs.render import ACCENT, attachable, image_embed
from cogs.replies import read_attachment


class Library(commands.Cog):
    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime

    @app_commands.command(name="upload", description="Host an image permanently")
    @app_commands.describe(
        image="PNG, JPEG, WebP or GIF, up to 10 MB",
        url="Or the address of an image on the web (up to 10 MB)",
        private="Only you see the reply",
    )
    async def upload(
        self,
        interaction: discord.Interaction,
        image: discord.Attachment | None = None,
        url: app_commands.Range[str, 1, 2048] | None = None,
        private: bool = False,
    ) -> None:
        if (image is None) == (url is None):
            raise InvalidRequest("image", "Give either an image or a url.")
        if not await answers_here(interaction):
            return
        await interaction.response.defer(thinking=True, ephemeral=private)
        runtime = self.runtime
        user_id, guild_id = str(interaction.user.id), guild_key(interaction)
        roles = role_ids_of(interaction.user)
        key = f"discord:{interaction.id}"
        if image is not None:
            record = await runtime.service.upload(
                await read_attachment(image), user_id=user_id, guild_id=guild_id,
                idempotency_key=key, metadata={"filename": image.filename[:100]}, role_ids=roles,
            )  # fmt: skip
        else:
            assert url is not None
            record = await runtime.service.upload_from_url(
                url, user_id=user_id, guild_id=guild_id, idempotency_key=key, role_ids=roles
            )
        file = await attachable(runtime, record)
        embed = image_embed(runtime, record, None, file.filename if file else None)
        embed.description = (
            f"Hosted at {record.url}\nUse `image_id:{record.id}` in /imagine to start from it."
        )
        view = discord.ui.View(timeout=None)
        for item in image_buttons(runtime, record)[1:]:  # nothing to re-roll for an upload
            view.add_item(item)
        await interaction.edit_original_response(
            content=f"✅ Uploaded: {record.url}",
            embed=fit_embeds([embed])[0],
            attachments=[file] if file else [],
            view=view,
        )

    @app_commands.command(name="models", description="The models you can use and their prices")
    async def models(self, interaction: discord.Interaction) -> None:
        runtime = self.runtime
        embed = discord.Embed(
            title="Models",
            description=f"Default: `{runtime.settings.default_model}`. Prices at each model's "
            "default size; Cloudflare bills $0.011 per 1,000 Neurons.",
            colour=ACCENT,
        )
        specs = runtime.catalog.enabled_image_models()
        for spec in specs[:FIELDS]:
            cost = spec.default_cost()
            abilities = " · ".join(sorted(spec.capabilities))
            embed.add_field(
                name=spec.name,
                value=(
                    f"`{spec.id}`\n{format_usd(cost.micro_usd)} per image "
                    f"({format_neurons(cost.milli_neurons)} Neurons) at "
                    f"{spec.default_width}×{spec.default_height} · ~{spec.typical_seconds:g} s\n"
                    + (f"*{spec.price_note}.*\n" if spec.price_note else "")
                    + f"{abilities}. {spec.description}"
                ),
                inline=False,
            )
        if len(specs) > FIELDS:
            embed.set_footer(text=f"… and {len(specs) - FIELDS} more: type in /imagine's model")
        await interaction.response.send_message(embed=fit_embeds([embed])[0], ephemeral=True)


async def setup(bot: commands.Bot) -> None:
    runtime = bot_runtime(bot)
    await bot.add_cog(Library(runtime))
