"""Turning service results into Discord messages: embeds, files and the buttons on each image.

Pure presentation: no service calls except fetching bytes to attach when Discord cannot reach
the store's URL (the local store on a private address). User text (prompts) is escaped and
everything is fitted to Discord's limits by ``cogs.limits``.
"""

from __future__ import annotations

import io
from dataclasses import dataclass, field
from typing import Any

import discord

from bot.catalog import Catalog
from bot.money import format_neurons, format_usd
from bot.requests import GenerationResult, ImageRecord, Progress
from bot.runtime import Runtime
from cogs.limits import (
    DESCRIPTION,
    FIELD_VALUE,
    FILE_BYTES,
    TITLE,
    clip,
    cut_lines,
    file_groups,
    fit_embeds,
    shown,
)

ACCENT = discord.Colour.from_rgb(246, 130, 31)  # Cloudflare orange
EXTENSIONS = {"image/png": "png", "image/jpeg": "jpg", "image/webp": "webp", "image/gif": "gif"}


def model_name(catalog: Catalog, model_id: str | None) -> str:
    return catalog.display_name(model_id)


def image_embed(
    runtime: Runtime, image: ImageRecord, result: GenerationResult | None, filename: str | None
) -> discord.Embed:
    title = shown(image.prompt, TITLE) if image.prompt else "Uploaded image"
    embed = discord.Embed(title=title, url=image.url, colour=ACCENT)
    embed.add_field(name="Model", value=model_name(runtime.catalog, image.model), inline=True)
    embed.add_field(name="Size", value=f"{image.width}×{image.height}", inline=True)
    embed.add_field(name="Seed", value=str(image.seed) if image.seed is not None else "—")
    cost = "free (cached)" if image.cached else format_usd(image.cost_micro_usd)
    embed.add_field(name="Cost", value=cost, inline=True)
    if result is not None:
        left = result.remaining
        embed.add_field(
            name="Left today",
            value=f"{left.images} images · {format_usd(left.micro_usd)}",
            inline=True,
        )
        if result.enhanced and result.prompt_used != result.prompt:
            embed.add_field(
                name="Prompt used", value=shown(result.prompt_used, FIELD_VALUE), inline=False
            )
    embed.add_field(name="Link", value=f"[Hosted image]({image.url})", inline=False)
    embed.set_image(url=f"attachment://{filename}" if filename else image.url)
    embed.set_footer(text=image.id)
    return embed


async def attachable(runtime: Runtime, image: ImageRecord) -> discord.File | None:
    """The image as a file when Discord cannot fetch the store's URL itself."""
    data = await runtime.service.bytes_to_attach(image)
    if data is None:
        return None
    name = f"{image.id}.{EXTENSIONS.get(image.content_type, 'png')}"
    return discord.File(io.BytesIO(data), filename=name)


DELIVERY_LABELS = {
    "interaction": "as the reply",
    "channel": "in the channel",
    "dm": "by DM",
    "undelivered": "not shown anywhere by Discord: refunded",
    "api": "through the HTTP API",
    "cli": "on the command line",
}


def details_embed(
    runtime: Runtime, image: ImageRecord, delivery: str | None = None
) -> discord.Embed:
    embed = discord.Embed(title="Image details", url=image.url, colour=ACCENT)

    def user_text(text: str | None) -> str | None:
        return shown(text, FIELD_VALUE) if text else None

    rows: list[tuple[str, Any]] = [
        ("Id", f"`{image.id}`"),
        ("Prompt", user_text(image.prompt)),
        ("Prompt used", user_text(image.prompt_used) if image.prompt_used != image.prompt
         else None),
        ("Negative prompt", user_text(image.negative_prompt)),
        ("Model", f"{model_name(runtime.catalog, image.model)} (`{image.model}`)"
         if image.model else None),
        ("Size", f"{image.width}×{image.height}"),
        ("Steps", image.steps),
        ("Seed", image.seed),
        ("Guidance", image.guidance),
        ("Strength", image.strength),
        ("Started from", f"`{image.source_image_id}`" if image.source_image_id else None),
        ("Cost", "free (cache hit)" if image.cached else
         f"{format_usd(image.cost_micro_usd)} ({format_neurons(image.cost_milli_neurons)} "
         "Neurons)"),
        ("Made by", f"<@{image.user_id}>" if image.user_id.isdigit() else image.user_id),
        ("Created", image.created_at),
        ("Delivered", DELIVERY_LABELS.get(delivery or "")),
        ("URL", image.url),
    ]  # fmt: skip
    for name, value in rows:
        if value not in (None, ""):
            embed.add_field(name=name, value=clip(str(value), FIELD_VALUE),
                            inline=len(str(value)) < 40)  # fmt: skip
    return fit_embeds([embed])[0]


@dataclass
class ResultPart:
    """One message's share of a result: the images whose files fit in one request."""

    images: list[ImageRecord] = field(default_factory=list)
    embeds: list[discord.Embed] = field(default_factory=list)
    files: list[discord.File] = field(default_factory=list)


async def result_parts(runtime: Runtime, result: GenerationResult) -> list[ResultPart]:
    """The result's images as messages Discord accepts: embeds fitted to the 6,000 characters of
    a message, and (for a store Discord cannot reach) files split so no request carries more
    than 25 MiB. Usually one part; an image whose file Discord would not take is linked."""
    return await image_parts(runtime, result.images, result)


async def image_parts(
    runtime: Runtime, images: list[ImageRecord], result: GenerationResult | None = None
) -> list[ResultPart]:
    """``result_parts`` for any images (``result`` adds what is left today, the prompt used)."""
    files = [await attachable(runtime, image) for image in images]
    sizes = [_size(file) if file else 0 for file in files]
    for index, size in enumerate(sizes):
        if size > FILE_BYTES:  # too large for Discord even alone: the embed links the store
            files[index], sizes[index] = None, 0
    parts = []
    for group in file_groups(sizes):
        part = ResultPart()
        for index in group:
            image, file = images[index], files[index]
            part.images.append(image)
            part.files += [file] if file else []
            part.embeds.append(image_embed(runtime, image, result, file.filename if file else None))
        part.embeds = fit_embeds(part.embeds)
        parts.append(part)
    return parts


GRID_FILE = "grid.jpg"


def grid_embed(runtime: Runtime, result: GenerationResult) -> discord.Embed:
    """One embed for a grid result: the grid picture, the shared settings, the total cost and
    a numbered link to each hosted image (U/V buttons below carry the same numbers)."""
    first = result.images[0]
    title = shown(first.prompt, TITLE) if first.prompt else "Images"
    embed = discord.Embed(title=title, url=first.url, colour=ACCENT)
    links = []
    for number, image in enumerate(result.images, 1):
        seed = f" · seed {image.seed}" if image.seed is not None else ""
        links.append(f"**{number}** · [Hosted image]({image.url}){seed}")
    embed.description = cut_lines(links, DESCRIPTION)
    embed.add_field(name="Model", value=model_name(runtime.catalog, first.model), inline=True)
    embed.add_field(name="Size", value=f"{first.width}×{first.height}", inline=True)
    cost = "free (cached)" if result.cached else format_usd(result.cost.micro_usd)
    embed.add_field(name="Cost", value=f"{cost} for {len(result.images)}", inline=True)
    left = result.remaining
    embed.add_field(
        name="Left today", value=f"{left.images} images · {format_usd(left.micro_usd)}", inline=True
    )
    if result.enhanced and result.prompt_used != result.prompt:
        embed.add_field(name="Prompt used", value=shown(result.prompt_used, FIELD_VALUE),
                        inline=False)  # fmt: skip
    embed.set_image(url=f"attachment://{GRID_FILE}")
    embed.set_footer(text=result.job_id)
    return fit_embeds([embed])[0]


def _size(file: discord.File) -> int:
    stream = file.fp
    position = stream.tell()
    size = stream.seek(0, io.SEEK_END)
    stream.seek(position)
    return size


def progress_text(event: Progress, model: str) -> str:
    if event.stage == "queued":
        return f"⏳ In the queue: position **{event.position}**…"
    if event.stage == "generating" and event.started_at is not None:
        started = discord.utils.format_dt(event.started_at, "R")
        eta = f", ready {discord.utils.format_dt(event.eta, 'R')}" if event.eta else ""
        return f"🎨 Generating with **{model}**: started {started}{eta}…"
    if event.stage == "storing":
        return "📦 Saving the image…"
    return "✅ Done."
