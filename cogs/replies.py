"""The reply to a generation, as /imagine and the buttons on every result make it.

The interaction is already deferred; progress is reported by editing its message (paced:
``cogs.progress``), and the result is delivered one embed per image (``cogs.delivery``: in the
channel or by DM when the interaction cannot carry it, refunded when nothing can).
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from dataclasses import replace

import discord
from discord.ext import commands

from bot.errors import BotError, InvalidImage, JobCancelled
from bot.money import format_usd
from bot.requests import GenerateRequest, GenerationResult, ImageRecord
from bot.runtime import Runtime
from cogs.cancel import WITHDRAWN, cancelled_text, show_cancelled
from cogs.common import runtime_of
from cogs.delivery import InteractionLink, MessagePart, ResultMessage, deliver
from cogs.limits import FILE_BYTES
from cogs.progress import ProgressBoard
from cogs.render import GRID_FILE, grid_embed, result_parts

log = logging.getLogger(__name__)

MAX_ATTACHMENT_BYTES = 10 * 1024 * 1024

# The buttons under each image of a result (``cogs.buttons.image_view``), handed in so that the
# buttons, which reply with this module, are not imported by it.
ViewOf = Callable[[Runtime, list[ImageRecord]], discord.ui.View]


def board_of(interaction: discord.Interaction) -> ProgressBoard:
    """The progress board of the running Imagine cog (buttons reach it through the client)."""
    client = interaction.client
    cog = client.get_cog("Imagine") if isinstance(client, commands.Bot) else None
    board = getattr(cog, "board", None)  # found by name: no cog imports another
    if not isinstance(board, ProgressBoard):
        raise RuntimeError("the Imagine cog is not loaded")
    return board


async def result_message(
    runtime: Runtime, result: GenerationResult, view_of: ViewOf, grid_of: ViewOf | None = None
) -> ResultMessage:
    """The images, their embeds and their buttons, as every way of delivery sends them: one
    message, or several when the files exceed one request's 25 MiB. With ``grid_of`` (the
    grid's buttons) a result of 2 to 4 images is one numbered grid picture instead."""
    grid = None
    if grid_of is not None and 2 <= len(result.images) <= 4:
        try:
            grid = await runtime.service.grid(result.images, max_bytes=FILE_BYTES)
        except BotError as error:  # the images are paid for: show them one by one instead
            log.warning("job %s: no grid (%s); images sent one by one", result.job_id, error)
    if grid is not None and grid_of is not None:
        parts = [
            MessagePart(
                [grid_embed(runtime, result)],
                [(GRID_FILE, grid.data)],
                functools.partial(grid_of, runtime, result.images),
            )
        ]
    else:
        parts = [
            MessagePart(
                part.embeds,
                [(file.filename, file.fp.read()) for file in part.files],
                functools.partial(view_of, runtime, part.images),
            )
            for part in await result_parts(runtime, result)
        ]
    notes = []
    if result.cached:
        notes.append("♻️ Found in the cache: the image was free.")
    if result.failed:
        notes.append(f"⚠️ {result.failed} image(s) failed and were not charged.")
    if runtime.service.renders_previews:
        notes.append("🧪 Local preview renderer (no Cloudflare account configured).")
    return ResultMessage(notes, parts)


async def generate_and_reply(
    interaction: discord.Interaction,
    request: GenerateRequest,
    model_label: str,
    view_of: ViewOf,
    grid_of: ViewOf | None = None,
) -> None:
    """Run one generation for an already-deferred interaction and deliver the result: through
    the interaction, else another way; refunded if no way shows it. ``grid_of``: show 2 to 4
    images as one grid with these buttons."""
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
    except JobCancelled as cancelled:  # by its owner or an admin, with the ❌ button: refunded
        await progress.close()
        await board.result_turn(interaction.channel_id)
        await show_cancelled(link, cancelled_text(cancelled))
        return
    finally:
        await progress.close()
    try:
        message = await result_message(runtime, result, view_of, grid_of)
    except Exception:
        await runtime.service.refund_undelivered(result.job_id)  # nothing can show it
        raise
    # Cancelled once generating: charged, and shown only to its owner, never in the channel.
    aside = result.withdrawn and not request.private and interaction.guild_id is not None
    if aside:
        await board.result_turn(interaction.channel_id)
        await show_cancelled(link, WITHDRAWN)
    way = await deliver(link, message, private=request.private, aside=aside,
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
