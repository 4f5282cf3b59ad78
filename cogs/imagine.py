"""/imagine: generate from a prompt, with every option the models take.

The command defers before anything else, then replies through ``cogs.replies`` (progress,
delivery, refunds); the buttons on the result live in ``cogs.buttons``, and those under a grid
(2 to 4 images in one picture, unless ``separate``) in ``cogs.grid``.
"""

from __future__ import annotations

import discord
from discord import app_commands
from discord.ext import commands

from bot.requests import GenerateRequest
from bot.runtime import Runtime
from bot.validation import ASPECT_RATIOS, MAX_SEED
from cogs.buttons import BUTTONS, image_view
from cogs.cancel import CancelButton
from cogs.common import (
    age_restricted,
    answers_here,
    bot_runtime,
    guild_key,
    role_ids_of,
)
from cogs.grid import GRID_BUTTONS, grid_view
from cogs.limits import fit_choices
from cogs.progress import ProgressBoard
from cogs.render import model_name
from cogs.replies import generate_and_reply, read_attachment


class Imagine(commands.Cog):
    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime
        self.board = ProgressBoard(runtime.settings.discord_channel_messages_per_10s)

    @app_commands.command(name="imagine", description="Generate an image from a prompt")
    @app_commands.describe(
        prompt="What to draw (3 to 2048 characters)",
        model="Which model (see /models)",
        template="One of this server's saved styles",
        negative_prompt="What to keep out of the image",
        aspect_ratio="Shape of the image",
        width="Width in pixels",
        height="Height in pixels",
        seed="Same seed + same settings = same image",
        steps="More steps: more detail, slower, may cost more",
        count="How many images (1-4)",
        image="Start from this image (image-to-image)",
        image_id="Start from one of your images or uploads",
        strength="How far to move from the starting image (0-1)",
        enhance="Rewrite a short prompt into a detailed one first",
        fresh="Skip the cache and make a new image",
        private="Only you see the result",
        separate="Post each image on its own instead of one grid (count 2-4)",
    )
    @app_commands.choices(
        aspect_ratio=[app_commands.Choice(name=r, value=r) for r in ASPECT_RATIOS]
    )
    async def imagine(
        self,
        interaction: discord.Interaction,
        prompt: app_commands.Range[str, 1, 2048],
        model: str | None = None,
        template: str | None = None,
        negative_prompt: app_commands.Range[str, 1, 2048] | None = None,
        aspect_ratio: str | None = None,
        width: app_commands.Range[int, 16, 4096] | None = None,
        height: app_commands.Range[int, 16, 4096] | None = None,
        seed: app_commands.Range[int, 0, MAX_SEED] | None = None,
        steps: app_commands.Range[int, 1, 100] | None = None,
        count: app_commands.Range[int, 1, 4] = 1,
        image: discord.Attachment | None = None,
        image_id: str | None = None,
        strength: app_commands.Range[float, 0.0, 1.0] | None = None,
        enhance: bool = False,
        fresh: bool = False,
        private: bool = False,
        separate: bool = False,
    ) -> None:
        if not await answers_here(interaction):
            return
        await interaction.response.defer(thinking=True, ephemeral=private)
        runtime = self.runtime
        request = GenerateRequest(
            prompt=prompt,
            user_id=str(interaction.user.id),
            guild_id=guild_key(interaction),
            role_ids=role_ids_of(interaction.user),
            age_restricted=age_restricted(interaction),
            model=model,
            template=template,
            negative_prompt=negative_prompt,
            aspect_ratio=aspect_ratio,
            width=width,
            height=height,
            seed=seed,
            steps=steps,
            count=count,
            image_id=image_id,
            init_image=await read_attachment(image) if image else None,
            strength=strength,
            enhance=enhance,
            fresh=fresh,
            private=private,
            idempotency_key=f"discord:{interaction.id}",
        )
        label = model_name(runtime.catalog, model or runtime.settings.default_model)
        grid = None if separate else grid_view
        await generate_and_reply(interaction, request, label, image_view, grid)

    @imagine.autocomplete("model")
    async def model_choices(
        self, interaction: discord.Interaction, current: str
    ) -> list[app_commands.Choice[str]]:
        needle = current.casefold()
        return fit_choices([
            app_commands.Choice(name=f"{m.name} · {m.id}", value=m.id)
            for m in self.runtime.catalog.enabled_image_models()
            if needle in m.id.casefold() or needle in m.name.casefold()
        ])  # fmt: skip

    @imagine.autocomplete("template")
    async def template_choices(
        self, interaction: discord.Interaction, current: str
    ) -> list[app_commands.Choice[str]]:
        if not interaction.guild_id:
            return []
        templates = await self.runtime.admin.templates(guild_key(interaction), current)
        return fit_choices([app_commands.Choice(name=t.name, value=t.name) for t in templates])

    @imagine.autocomplete("image_id")
    async def image_choices(
        self, interaction: discord.Interaction, current: str
    ) -> list[app_commands.Choice[str]]:
        images = await self.runtime.service.user_images(
            str(interaction.user.id), current
        )
        return fit_choices([
            app_commands.Choice(name=f"{i.prompt or 'upload'} · {i.id}", value=i.id)
            for i in images
        ])  # fmt: skip


async def setup(bot: commands.Bot) -> None:
    bot.add_dynamic_items(*BUTTONS, *GRID_BUTTONS, CancelButton)
    await bot.add_cog(Imagine(bot_runtime(bot)))
