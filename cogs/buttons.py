"""The buttons on every result: re-roll, variations, edit, details, delete.

Buttons acknowledge before any work and are DynamicItems whose custom_id carries the image id,
so they keep working after a restart; on a private result they answer privately. They reach
the runtime through the bot that received the click (``cogs.common.runtime_of``, typed).
"""

from __future__ import annotations

import re
from typing import Any

import discord

from bot.catalog import IMAGE_TO_IMAGE
from bot.requests import GenerateRequest, ImageRecord
from bot.runtime import Runtime
from cogs.common import (
    age_restricted,
    answers_here,
    guarded,
    guild_key,
    is_admin,
    role_ids_of,
    runtime_of,
)
from cogs.delivery import InteractionLink
from cogs.render import details_embed, model_name
from cogs.replies import generate_and_reply

IMAGE_ID = r"(?P<id>img_[0-9a-f]{20})"


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
    if can_vary(runtime):
        buttons.append(VariationsButton(image.id))
    buttons += [EditButton(image.id), DetailsButton(image.id), DeleteButton(image.id)]
    return buttons


class _ImageButton(discord.ui.DynamicItem[discord.ui.Button[Any]], template=rf"img:_:{IMAGE_ID}"):
    """A persistent button carrying an image id; subclasses say what it does."""

    action = ""
    label = ""
    emoji = ""
    style = discord.ButtonStyle.secondary

    def __init__(self, image_id: str) -> None:
        super().__init__(self.button(image_id))
        self.image_id = image_id

    def button(self, image_id: str) -> discord.ui.Button[Any]:
        """The button itself; its custom_id must match the class's template."""
        return discord.ui.Button(
            label=self.label, emoji=self.emoji, style=self.style,
            custom_id=f"img:{self.action}:{image_id}",
        )  # fmt: skip

    @classmethod
    async def from_custom_id(
        cls, interaction: discord.Interaction, item: discord.ui.Item[Any], match: re.Match[str]
    ) -> _ImageButton:
        return cls(match["id"])

    async def start_run(self, interaction: discord.Interaction) -> tuple[ImageRecord, bool] | None:
        """Before a button runs a new job: refuse privately outside the server's allowed
        channels (None), else acknowledge (privately on a private result) and read the image."""
        private = asks_privately(interaction)
        if not await answers_here(interaction):
            return None
        await interaction.response.defer(thinking=True, ephemeral=private)
        return await self.image(interaction), private

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
        started = await self.start_run(interaction)
        if started is None:
            return
        image, private = started
        runtime = runtime_of(interaction)
        request = rerun_request(interaction, image, private=private)
        label = model_name(runtime.catalog, image.model)
        await generate_and_reply(interaction, request, label, image_view)


def rerun_request(
    interaction: discord.Interaction,
    image: ImageRecord,
    *,
    private: bool,
    prompt: str | None = None,
    negative_prompt: str | None = None,
) -> GenerateRequest:
    """A new job with ``image``'s settings for whoever clicked; the prompts replaced if given."""
    return GenerateRequest(
        prompt=(image.prompt or "") if prompt is None else prompt,
        user_id=str(interaction.user.id),
        guild_id=guild_key(interaction),
        role_ids=role_ids_of(interaction.user),
        age_restricted=age_restricted(interaction),
        model=image.model,
        negative_prompt=image.negative_prompt if prompt is None else negative_prompt,
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


def can_vary(runtime: Runtime) -> bool:
    """Variations need an enabled image-to-image model."""
    return any(IMAGE_TO_IMAGE in m.capabilities for m in runtime.catalog.enabled_image_models())


class VariationsButton(_ImageButton, template=rf"img:vary:{IMAGE_ID}"):
    action, label, emoji = "vary", "Variations", "🎨"

    @guarded
    async def callback(self, interaction: discord.Interaction) -> None:
        await run_variations(self, interaction)


async def run_variations(button: _ImageButton, interaction: discord.Interaction) -> None:
    """Image-to-image from the button's image, for whoever clicked (🎨 and the grid's V1-V4)."""
    started = await button.start_run(interaction)
    if started is None:
        return
    image, private = started
    request = GenerateRequest(
        prompt=image.prompt or "a variation of this image",
        user_id=str(interaction.user.id),
        guild_id=guild_key(interaction),
        role_ids=role_ids_of(interaction.user),
        age_restricted=age_restricted(interaction),
        image_id=image.id,
        strength=0.6,
        fresh=True,
        private=private,
        idempotency_key=f"discord:{interaction.id}",
    )
    await generate_and_reply(interaction, request, "image-to-image", image_view)


class EditButton(_ImageButton, template=rf"img:edit:{IMAGE_ID}"):
    action, label, emoji = "edit", "Edit", "🖋️"

    @guarded
    async def callback(self, interaction: discord.Interaction) -> None:
        """A modal is the first answer or none: it cannot follow a defer. Reading the image is
        one local SQLite read, well inside the 3 seconds."""
        if not await answers_here(interaction):
            return
        image = await self.image(interaction)
        spec = runtime_of(interaction).catalog.find(image.model) if image.model else None
        modal = EditModal(
            image,
            private=asks_privately(interaction),
            negative=bool(spec and spec.supports_negative_prompt),
            max_chars=spec.max_prompt_chars if spec else 2048,
        )
        await interaction.response.send_modal(modal)


class EditModal(discord.ui.Modal, title="Edit and run again"):
    """The prompt (and negative prompt) of an image, filled in; submitting runs a new job with
    the image's other settings. It lives in discord.py's modal store for 10 minutes (bounded)."""

    def __init__(self, image: ImageRecord, *, private: bool, negative: bool, max_chars: int):
        super().__init__(timeout=600, custom_id=f"img:edited:{image.id}")
        self.image, self.private = image, private
        limit = min(max_chars, 4000)  # Discord's text input limit
        self.prompt = discord.ui.TextInput[EditModal](
            label="Prompt", style=discord.TextStyle.paragraph, max_length=limit,
            default=(image.prompt or "")[:limit],
        )  # fmt: skip
        self.add_item(self.prompt)
        self.negative: discord.ui.TextInput[EditModal] | None = None
        if negative:
            self.negative = discord.ui.TextInput[EditModal](
                label="Negative prompt", style=discord.TextStyle.paragraph, required=False,
                max_length=limit, default=(image.negative_prompt or "")[:limit],
            )  # fmt: skip
            self.add_item(self.negative)

    @guarded  # errors answered like a button's (Modal.on_error's signature fights its base)
    async def on_submit(self, interaction: discord.Interaction) -> None:
        await interaction.response.defer(thinking=True, ephemeral=self.private)
        negative = (self.negative.value or None) if self.negative is not None else None
        request = rerun_request(interaction, self.image, private=self.private,
                                prompt=self.prompt.value, negative_prompt=negative)  # fmt: skip
        label = model_name(runtime_of(interaction).catalog, self.image.model)
        await generate_and_reply(interaction, request, label, image_view)


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


BUTTONS = (RerollButton, VariationsButton, EditButton, DetailsButton, DeleteButton)
