"""Turning service results into Discord messages: embeds, files and the buttons on each image.

Pure presentation: no service calls except fetching bytes to attach when Discord cannot reach
the store's URL (the local store on a private address).
"""

from __future__ import annotations

import io
from typing import Any

import discord

from bot.catalog import Catalog
from bot.ledger import ImageRecord
from bot.money import format_neurons, format_usd
from bot.requests import GenerationResult, Progress
from bot.runtime import Runtime
from cogs.common import clip

ACCENT = discord.Colour.from_rgb(246, 130, 31)  # Cloudflare orange
EXTENSIONS = {"image/png": "png", "image/jpeg": "jpg", "image/webp": "webp", "image/gif": "gif"}


def model_name(catalog: Catalog, model_id: str | None) -> str:
    spec = catalog.find(model_id or "")
    return spec.name if spec else (model_id or "?")


def image_embed(
    runtime: Runtime, image: ImageRecord, result: GenerationResult | None, filename: str | None
) -> discord.Embed:
    embed = discord.Embed(
        title=clip(image.prompt or "Uploaded image", 256), url=image.url, colour=ACCENT
    )
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
            embed.add_field(name="Prompt used", value=clip(result.prompt_used, 1024), inline=False)
    embed.add_field(name="Link", value=f"[Hosted image]({image.url})", inline=False)
    embed.set_image(url=f"attachment://{filename}" if filename else image.url)
    embed.set_footer(text=image.id)
    return embed


async def attachable(runtime: Runtime, image: ImageRecord) -> discord.File | None:
    """The image as a file when Discord cannot fetch the store's URL itself."""
    if runtime.store.public:
        return None
    data = await runtime.store.get(image.storage_key)
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
    rows: list[tuple[str, Any]] = [
        ("Id", f"`{image.id}`"),
        ("Prompt", image.prompt),
        ("Prompt used", image.prompt_used if image.prompt_used != image.prompt else None),
        ("Negative prompt", image.negative_prompt),
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
            embed.add_field(name=name, value=clip(str(value), 1024), inline=len(str(value)) < 40)
    return embed


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
