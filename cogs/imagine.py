"""/imagine and the buttons on every result: re-roll, variations, details, delete.

The command defers before anything else, reports queue position and progress by editing its
message (paced: ``cogs.progress``), and delivers one embed per image (``cogs.delivery``: in the
channel or by DM when the interaction cannot carry it, refunded when nothing can). Buttons
acknowledge before any work and are DynamicItems whose custom_id carries the image id, so they
keep working after a restart; on a private result they answer privately.
"""

from __future__ import annotations

import functools
import logging
import re
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
from bot.money import format_usd
from bot.requests import GenerateRequest, GenerationResult
from bot.runtime import Runtime
from bot.validation import ASPECT_RATIOS, MAX_SEED
from cogs.common import guild_key, is_admin, runtime_of
from cogs.delivery import InteractionLink, MessagePart, ResultMessage, deliver
from cogs.limits import fit_choices
from cogs.progress import ProgressBoard
from cogs.render import details_embed, model_name, result_parts

log = logging.getLogger(__name__)

MAX_ATTACHMENT_BYTES = 10 * 1024 * 1024
IMAGE_ID = r"(?P<id>img_[0-9a-f]{20})"


async def result_message(runtime: Runtime, result: GenerationResult) -> ResultMessage:
    """The images, their embeds and their buttons, as every way of delivery sends them: one
    message, or several when the files exceed one request's 25 MiB."""
    parts = [
        MessagePart(
            part.embeds,
            [(file.filename, file.fp.read()) for file in part.files],
            functools.partial(image_view, runtime, part.images),
        )
        for part in await result_parts(runtime, result)
    ]
    notes = []
    if result.cached:
        notes.append("♻️ Found in the cache: this one was free.")
    if result.failed:
        notes.append(f"⚠️ {result.failed} image(s) failed and were not charged.")
    if runtime.service.renders_previews:
        notes.append("🧪 Local preview renderer (no Cloudflare account configured).")
    return ResultMessage(notes, parts)


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
    """Run one generation for an already-deferred interaction and deliver the result: through
    the interaction, else another way; refunded if no way shows it."""
    runtime = runtime_of(interaction)
    link = InteractionLink.of(interaction)
    board = board_of(interaction)
    spec = runtime.catalog.find(request.model or runtime.settings.default_model)
    progress = board.track(
        link,
        model_label,
        typical_seconds=spec.typical_seconds if spec else 10.0,
        parallel=runtime.settings.max_concurrent_jobs,
        private=request.private or interaction.guild_id is None,  # then a late result goes by DM
    )
    try:
        result = await runtime.service.generate(replace(request, progress=progress.update))
    finally:
        await progress.close()
    try:
        message = await result_message(runtime, result)
    except Exception:
        await runtime.service.refund_undelivered(result.job_id)  # nothing can show it
        raise
    way = await deliver(link, message, private=request.private,
                        channel_turn=lambda: board.result_turn(interaction.channel_id))  # fmt: skip
    if way != "undelivered":
        await runtime.service.record_delivery(result.job_id, way)
        if message.tried:
            log.info("job %s delivered by %s (%s)", result.job_id, way, "; ".join(message.tried))
        return
    refunded = await runtime.service.refund_undelivered(result.job_id)
    log.warning(
        "job %s of user %s could not be shown anywhere (%s): refunded %s; the images stay "
        "in their list",
        result.job_id, request.user_id, "; ".join(message.tried), format_usd(refunded),
    )  # fmt: skip


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


def asks_privately(interaction: discord.Interaction) -> bool:
    """A button on a private (ephemeral) result, or in a DM, answers privately."""
    message = interaction.message
    return interaction.guild_id is None or bool(message and message.flags.ephemeral)


class RerollButton(_ImageButton, template=rf"img:reroll:{IMAGE_ID}"):
    action, label, emoji = "reroll", "Re-roll", "🔄"

    @guarded
    async def callback(self, interaction: discord.Interaction) -> None:
        private = asks_privately(interaction)
        await interaction.response.defer(thinking=True, ephemeral=private)
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
            private=private,
            idempotency_key=f"discord:{interaction.id}",
        )
        await generate_and_reply(interaction, request, model_name(runtime.catalog, image.model))


class VariationsButton(_ImageButton, template=rf"img:vary:{IMAGE_ID}"):
    action, label, emoji = "vary", "Variations", "🎨"

    @guarded
    async def callback(self, interaction: discord.Interaction) -> None:
        private = asks_privately(interaction)
        await interaction.response.defer(thinking=True, ephemeral=private)
        image = await self.image(interaction)
        request = GenerateRequest(
            prompt=image.prompt or "a variation of this image",
            user_id=str(interaction.user.id),
            guild_id=guild_key(interaction),
            image_id=image.id,
            strength=0.6,
            fresh=True,
            private=private,
            idempotency_key=f"discord:{interaction.id}",
        )
        await generate_and_reply(interaction, request, "image-to-image")


class DetailsButton(_ImageButton, template=rf"img:info:{IMAGE_ID}"):
    action, label, emoji = "info", "Details", "ℹ️"

    @guarded
    async def callback(self, interaction: discord.Interaction) -> None:
        await interaction.response.defer(thinking=True, ephemeral=True)
        runtime = runtime_of(interaction)
        image = await self.image(interaction)
        delivery = await runtime.service.delivery_of(image.job_id)
        await interaction.followup.send(
            embed=details_embed(runtime, image, delivery), ephemeral=True
        )


class DeleteButton(_ImageButton, template=rf"img:delete:{IMAGE_ID}"):
    action, label, emoji = "delete", "Delete", "🗑️"
    style = discord.ButtonStyle.danger

    @guarded
    async def callback(self, interaction: discord.Interaction) -> None:
        """Acknowledged first (a slow store must not make the click fail), then the image is
        deleted and the message edited to show the outcome."""
        await interaction.response.defer()
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
        await InteractionLink.of(interaction).edit(
            content=f"🗑️ An image was deleted by {interaction.user.mention}.",
            embeds=kept,
            attachments=kept_files,
            view=view if kept else None,
        )


def board_of(interaction: discord.Interaction) -> ProgressBoard:
    """The progress board of the running Imagine cog (buttons reach it through the client)."""
    cog = interaction.client.get_cog("Imagine")  # type: ignore[attr-defined]
    if not isinstance(cog, Imagine):
        raise RuntimeError("the Imagine cog is not loaded")
    return cog.board


class Imagine(commands.Cog):
    def __init__(self, bot: commands.Bot) -> None:
        self.bot = bot
        runtime: Runtime = bot.runtime  # type: ignore[attr-defined]
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
            private=private,
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
