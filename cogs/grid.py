"""The buttons under a grid result: U1-U4 post one image alone, V1-V4 make variations of it.

Persistent like every result button: each is a DynamicItem whose custom_id carries the image's
number in the grid and its id (``grid:up:2:img_…``, at most 36 of Discord's 100 characters), so they
work after a restart. U answers through the click's own interaction, privately on a private
result, with the image at full size and its usual buttons; nothing is charged. V is the 🎨
Variations button for that image (``cogs.buttons.run_variations``), charged to whoever clicks.
"""

from __future__ import annotations

import re
from typing import Any

import discord

from bot.requests import ImageRecord
from bot.runtime import Runtime
from cogs.buttons import (
    IMAGE_ID,
    _ImageButton,
    asks_privately,
    can_vary,
    image_view,
    run_variations,
)
from cogs.common import guarded, runtime_of
from cogs.delivery import InteractionLink
from cogs.render import image_parts

NUMBER = r"(?P<n>[1-4])"


def grid_view(runtime: Runtime, images: list[ImageRecord]) -> discord.ui.View:
    """U1…Un on the first row, V1…Vn on the second (when a model can make variations)."""
    view = discord.ui.View(timeout=None)
    kinds: list[type[_GridButton]] = [UpscaleButton]
    if can_vary(runtime):
        kinds.append(GridVariationsButton)
    for row, kind in enumerate(kinds):
        for number, image in enumerate(images, 1):
            button = kind(image.id, number)
            button.item.row = row
            view.add_item(button)
    return view


class _GridButton(_ImageButton, template=rf"grid:_:{NUMBER}:{IMAGE_ID}"):
    """A persistent button for image ``number`` of a grid; subclasses say what it does."""

    letter = ""

    def __init__(self, image_id: str, number: int) -> None:
        self.number = number  # read by ``button`` while the item is built
        super().__init__(image_id)

    def button(self, image_id: str) -> discord.ui.Button[Any]:
        return discord.ui.Button(
            label=f"{self.letter}{self.number}", style=self.style,
            custom_id=f"grid:{self.action}:{self.number}:{image_id}",
        )  # fmt: skip

    @classmethod
    async def from_custom_id(
        cls, interaction: discord.Interaction, item: discord.ui.Item[Any], match: re.Match[str]
    ) -> _GridButton:
        return cls(match["id"], int(match["n"]))


class UpscaleButton(_GridButton, template=rf"grid:up:{NUMBER}:{IMAGE_ID}"):
    action, letter = "up", "U"

    @guarded
    async def callback(self, interaction: discord.Interaction) -> None:
        """Acknowledged first (privately on a private result), then the image alone."""
        await interaction.response.defer(thinking=True, ephemeral=asks_privately(interaction))
        runtime = runtime_of(interaction)
        image = await self.image(interaction)
        [part] = await image_parts(runtime, [image])
        await InteractionLink.of(interaction).edit(
            content=f"Image **{self.number}** of the grid.",
            embeds=part.embeds,
            attachments=part.files,
            view=image_view(runtime, [image]),
        )


class GridVariationsButton(_GridButton, template=rf"grid:vary:{NUMBER}:{IMAGE_ID}"):
    action, letter = "vary", "V"

    @guarded
    async def callback(self, interaction: discord.Interaction) -> None:
        await run_variations(self, interaction)


GRID_BUTTONS = (UpscaleButton, GridVariationsButton)
