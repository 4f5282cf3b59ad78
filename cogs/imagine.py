"""/imagine and the buttons on every result: re-roll, variations, details, delete.

The command defers before anything else, reports queue position and progress by editing its
message at a calm pace, and answers with one embed per image. Buttons are DynamicItems whose
custom_id carries the image id, so they keep working after a restart.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import re
import time
from collections.abc import Callable, Coroutine
from dataclasses import replace
from typing import Any

import discord
from discord import app_commands
from discord.ext import commands

from bot.catalog import IMAGE_TO_IMAGE
from bot.discord_bot import report_error
from bot.errors import InvalidImage
from bot.ledger import ImageRecord
from bot.requests import GenerateRequest, GenerationResult, Progress
from bot.runtime import Runtime
from bot.validation import ASPECT_RATIOS, MAX_SEED
from cogs.common import guild_key, is_admin, runtime_of
from cogs.limits import fit_choices
from cogs.render import details_embed, model_name, progress_text, result_parts

log = logging.getLogger(__name__)

EDIT_INTERVAL = 2.0
MAX_ATTACHMENT_BYTES = 10 * 1024 * 1024
IMAGE_ID = r"(?P<id>img_[0-9a-f]{20})"


class ProgressMessage:
    """Edits the deferred reply with the job's progress, at most once per EDIT_INTERVAL."""

    def __init__(self, interaction: discord.Interaction, model: str) -> None:
        self.interaction = interaction
        self.model = model
        self._latest: Progress | None = None
        self._shown: Progress | None = None
        self._last_edit = 0.0
        self._task: asyncio.Task[None] | None = None
        self._closed = False

    def update(self, event: Progress) -> None:
        if self._closed or event.stage == "done":
            return
        self._latest = event
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._edit_soon())

    async def _edit_soon(self) -> None:
        wait = self._last_edit + EDIT_INTERVAL - time.monotonic()
        if wait > 0:
            await asyncio.sleep(wait)
        event = self._latest
        if self._closed or event is None or event == self._shown:
            return
        self._shown = event
        self._last_edit = time.monotonic()
        try:
            await self.interaction.edit_original_response(content=progress_text(event, self.model))
        except discord.HTTPException:
            log.debug("progress edit failed for interaction %s", self.interaction.id)

    async def close(self) -> None:
        self._closed = True
        if self._task is not None and not self._task.done():
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)


async def send_result(
    interaction: discord.Interaction, runtime: Runtime, result: GenerationResult
) -> None:
    """Replace the deferred reply with the images, their embeds and their buttons (files over
    one request's 25 MiB go on in followups with the same visibility)."""
    parts = await result_parts(runtime, result)
    notes = []
    if result.cached:
        notes.append("♻️ Found in the cache: this one was free.")
    if result.failed:
        notes.append(f"⚠️ {result.failed} image(s) failed and were not charged.")
    if runtime.settings.image_provider == "local":
        notes.append("🧪 Local preview renderer (no Cloudflare account configured).")
    first, *more = parts
    shown = await interaction.edit_original_response(
        content="\n".join(notes) or None,
        embeds=first.embeds,
        attachments=first.files,
        view=image_view(runtime, first.images),
    )
    for part in more:
        await interaction.followup.send(
            embeds=part.embeds,
            files=part.files,
            view=image_view(runtime, part.images),
            ephemeral=shown.flags.ephemeral,
        )


def image_view(runtime: Runtime, images: list[ImageRecord]) -> discord.ui.View:
    """The buttons of each image, one row per image."""
    view = discord.ui.View(timeout=None)
    for row, image in enumerate(images):
        for item in image_buttons(runtime, image):
            item.item.row = row
            view.add_item(item)
    return view


def image_buttons(runtime: Runtime, image: ImageRecord) -> list[discord.ui.DynamicItem[Any]]:
    buttons: list[discord.ui.DynamicItem[Any]] = [RerollButton(image.id)]
    if any(IMAGE_TO_IMAGE in m.capabilities for m in runtime.catalog.enabled_image_models()):
        buttons.append(VariationsButton(image.id))
    buttons += [DetailsButton(image.id), DeleteButton(image.id)]
    return buttons


async def generate_and_reply(
    interaction: discord.Interaction, request: GenerateRequest, model_label: str
) -> None:
    """Run one generation for an already-deferred interaction and show the result."""
    runtime = runtime_of(interaction)
    progress = ProgressMessage(interaction, model_label)
    try:
        result = await runtime.service.generate(replace(request, progress=progress.update))
    finally:
        await progress.close()
    await send_result(interaction, runtime, result)


async def read_attachment(attachment: discord.Attachment) -> bytes:
    if attachment.size > MAX_ATTACHMENT_BYTES:
        raise InvalidImage(
            f"The attachment is {attachment.size / 1024 / 1024:.1f} MB; the limit is 10 MB.",
            problem="too_large",
        )
    return await attachment.read()


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


class _ImageButton(discord.ui.DynamicItem[discord.ui.Button[Any]], template=rf"img:_:{IMAGE_ID}"):
    """A persistent button carrying an image id; subclasses say what it does."""

    action = ""
    label = ""
    emoji = ""
    style = discord.ButtonStyle.secondary

    def __init__(self, image_id: str) -> None:
        super().__init__(
            discord.ui.Button(
                label=self.label,
                emoji=self.emoji,
                style=self.style,
                custom_id=f"img:{self.action}:{image_id}",
            )
        )
        self.image_id = image_id

    @classmethod
    async def from_custom_id(
        cls, interaction: discord.Interaction, item: discord.ui.Item[Any], match: re.Match[str]
    ) -> _ImageButton:
        return cls(match["id"])

    async def image(self, interaction: discord.Interaction) -> ImageRecord:
        return await runtime_of(interaction).service.get_image(self.image_id)


class RerollButton(_ImageButton, template=rf"img:reroll:{IMAGE_ID}"):
    action, label, emoji = "reroll", "Re-roll", "🔄"

    @guarded
    async def callback(self, interaction: discord.Interaction) -> None:
        await interaction.response.defer(thinking=True)
        image = await self.image(interaction)
        runtime = runtime_of(interaction)
        request = GenerateRequest(
            prompt=image.prompt or "",
            user_id=str(interaction.user.id),
            guild_id=guild_key(interaction),
            model=image.model,
            negative_prompt=image.negative_prompt,
            width=image.width,
            height=image.height,
            steps=image.steps,
            guidance=image.guidance,
            image_id=image.source_image_id,
            strength=image.strength,
            fresh=True,
            idempotency_key=f"discord:{interaction.id}",
        )
        await generate_and_reply(interaction, request, model_name(runtime.catalog, image.model))


class VariationsButton(_ImageButton, template=rf"img:vary:{IMAGE_ID}"):
    action, label, emoji = "vary", "Variations", "🎨"

    @guarded
    async def callback(self, interaction: discord.Interaction) -> None:
        await interaction.response.defer(thinking=True)
        image = await self.image(interaction)
        request = GenerateRequest(
            prompt=image.prompt or "a variation of this image",
            user_id=str(interaction.user.id),
            guild_id=guild_key(interaction),
            image_id=image.id,
            strength=0.6,
            fresh=True,
            idempotency_key=f"discord:{interaction.id}",
        )
        await generate_and_reply(interaction, request, "image-to-image")


class DetailsButton(_ImageButton, template=rf"img:info:{IMAGE_ID}"):
    action, label, emoji = "info", "Details", "ℹ️"

    @guarded
    async def callback(self, interaction: discord.Interaction) -> None:
        image = await self.image(interaction)
        await interaction.response.send_message(
            embed=details_embed(runtime_of(interaction), image), ephemeral=True
        )


class DeleteButton(_ImageButton, template=rf"img:delete:{IMAGE_ID}"):
    action, label, emoji = "delete", "Delete", "🗑️"
    style = discord.ButtonStyle.danger

    @guarded
    async def callback(self, interaction: discord.Interaction) -> None:
        runtime = runtime_of(interaction)
        await runtime.service.delete_image(
            self.image_id, requester_id=str(interaction.user.id), is_admin=is_admin(interaction)
        )
        message = interaction.message
        kept = [e for e in (message.embeds if message else []) if e.footer.text != self.image_id]
        view = discord.ui.View(timeout=None)
        for row, embed in enumerate(kept):
            image_id = embed.footer.text or ""
            if re.fullmatch(IMAGE_ID, image_id):
                for item in image_buttons(runtime, await runtime.service.get_image(image_id)):
                    item.item.row = row
                    view.add_item(item)
        kept_files = [
            a for a in (message.attachments if message else [])
            if not a.filename.startswith(self.image_id)
        ]  # fmt: skip
        await interaction.response.edit_message(
            content=f"🗑️ An image was deleted by {interaction.user.mention}.",
            embeds=kept,
            attachments=kept_files,
            view=view if kept else None,
        )


class Imagine(commands.Cog):
    def __init__(self, bot: commands.Bot) -> None:
        self.bot = bot

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
    ) -> None:
        await interaction.response.defer(thinking=True, ephemeral=private)
        runtime = runtime_of(interaction)
        request = GenerateRequest(
            prompt=prompt,
            user_id=str(interaction.user.id),
            guild_id=guild_key(interaction),
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
            idempotency_key=f"discord:{interaction.id}",
        )
        label = model_name(runtime.catalog, model or runtime.settings.default_model)
        await generate_and_reply(interaction, request, label)

    @imagine.autocomplete("model")
    async def model_choices(
        self, interaction: discord.Interaction, current: str
    ) -> list[app_commands.Choice[str]]:
        needle = current.casefold()
        return fit_choices([
            app_commands.Choice(name=f"{m.name} · {m.id}", value=m.id)
            for m in runtime_of(interaction).catalog.enabled_image_models()
            if needle in m.id.casefold() or needle in m.name.casefold()
        ])  # fmt: skip

    @imagine.autocomplete("template")
    async def template_choices(
        self, interaction: discord.Interaction, current: str
    ) -> list[app_commands.Choice[str]]:
        if not interaction.guild_id:
            return []
        templates = await runtime_of(interaction).admin.templates(guild_key(interaction), current)
        return fit_choices([app_commands.Choice(name=t.name, value=t.name) for t in templates])

    @imagine.autocomplete("image_id")
    async def image_choices(
        self, interaction: discord.Interaction, current: str
    ) -> list[app_commands.Choice[str]]:
        images = await runtime_of(interaction).service.user_images(
            str(interaction.user.id), current
        )
        return fit_choices([
            app_commands.Choice(name=f"{i.prompt or 'upload'} · {i.id}", value=i.id)
            for i in images
        ])  # fmt: skip


async def setup(bot: commands.Bot) -> None:
    bot.add_dynamic_items(RerollButton, VariationsButton, DetailsButton, DeleteButton)
    await bot.add_cog(Imagine(bot))
