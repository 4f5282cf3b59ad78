"""/gallery: your recent images (admins: ``server: true`` for the server's), paged with ◀ ▶,
answered privately, with a private link to the web gallery.

The page buttons are DynamicItems whose custom_id carries the owner, the view and the page they
lead to, so they keep working after a restart; only the person who opened a gallery pages it.
"""

from __future__ import annotations

import re
from datetime import datetime
from typing import Any

import discord
from discord import app_commands
from discord.ext import commands

from bot.gallery import GalleryPage
from bot.money import format_usd
from bot.runtime import Runtime
from cogs.common import ADMIN_REFUSAL, guild_key, is_admin, runtime_of
from cogs.limits import FIELD_NAME, fit_embeds, shown
from cogs.render import ACCENT, model_name

PER_PAGE = 5
NOT_YOURS = "Only the person who opened this gallery can page it: use /gallery for your own."


def gallery_embed(runtime: Runtime, page: GalleryPage, title: str, link: str) -> discord.Embed:
    hours = runtime.settings.gallery_link_hours
    embed = discord.Embed(
        title=title,
        description=f"[Open the web gallery]({link}): a private link, valid {hours} h. "
        "Do not share it.",
        colour=ACCENT,
    )
    for image in page.images:
        made = discord.utils.format_dt(datetime.fromisoformat(image.created_at), "R")
        cost = "free (cached)" if image.cached else format_usd(image.cost_micro_usd)
        what = model_name(runtime.catalog, image.model) if image.kind != "upload" else "upload"
        embed.add_field(
            name=shown(image.prompt, FIELD_NAME) if image.prompt else "Uploaded image",
            value=f"`{image.id}` · {what} · {cost} · {made} · [open]({image.url})",
            inline=False,
        )
    if not page.images:
        embed.add_field(name="No images yet", value="Make one with /imagine.", inline=False)
    embed.set_footer(text=f"Page {page.page + 1} of {page.pages} · {page.total} images")
    return fit_embeds([embed])[0]


async def gallery_message(
    interaction: discord.Interaction, owner_id: int, server: bool, page_number: int
) -> tuple[discord.Embed, discord.ui.View]:
    runtime = runtime_of(interaction)
    user, guild = str(owner_id), guild_key(interaction)
    page = await runtime.gallery.page(
        user, guild, server=server, page=page_number, per_page=PER_PAGE
    )
    link = runtime.gallery.link(user, guild, server=server)
    title = "The server's gallery" if server else "Your gallery"
    view = discord.ui.View(timeout=None)
    for direction, target, enabled in (
        ("prev", page.page - 1, page.has_previous),
        ("next", page.page + 1, page.has_next),
    ):
        button = PageButton(owner_id, server, direction, max(target, 0))
        button.item.disabled = not enabled
        view.add_item(button)
    return gallery_embed(runtime, page, title, link), view


class PageButton(
    discord.ui.DynamicItem[discord.ui.Button[Any]],
    template=r"gallery:(?P<dir>prev|next):(?P<owner>[0-9]{1,20}):(?P<scope>[us]):(?P<page>[0-9]{1,6})",
):
    def __init__(self, owner_id: int, server: bool, direction: str, page: int) -> None:
        super().__init__(
            discord.ui.Button(
                emoji="◀" if direction == "prev" else "▶",
                style=discord.ButtonStyle.secondary,
                custom_id=f"gallery:{direction}:{owner_id}:{'s' if server else 'u'}:{page}",
            )
        )
        self.owner_id, self.server, self.direction, self.page = owner_id, server, direction, page

    @classmethod
    async def from_custom_id(
        cls, interaction: discord.Interaction, item: discord.ui.Item[Any], match: re.Match[str]
    ) -> PageButton:
        return cls(int(match["owner"]), match["scope"] == "s", match["dir"], int(match["page"]))

    async def callback(self, interaction: discord.Interaction) -> None:
        if interaction.user.id != self.owner_id:
            await interaction.response.send_message(NOT_YOURS, ephemeral=True)
            return
        if self.server and not is_admin(interaction):  # no longer an admin since it opened
            await interaction.response.send_message(ADMIN_REFUSAL, ephemeral=True)
            return
        embed, view = await gallery_message(interaction, self.owner_id, self.server, self.page)
        await interaction.response.edit_message(embed=embed, view=view)


class Gallery(commands.Cog):
    def __init__(self, bot: commands.Bot) -> None:
        self.bot = bot

    @app_commands.command(name="gallery", description="Your recent images, and a web gallery")
    @app_commands.describe(server="The whole server's images and usage (admins)")
    async def gallery(self, interaction: discord.Interaction, server: bool = False) -> None:
        if server and not (interaction.guild_id and is_admin(interaction)):
            raise app_commands.CheckFailure(ADMIN_REFUSAL)
        embed, view = await gallery_message(interaction, interaction.user.id, server, 0)
        await interaction.response.send_message(embed=embed, view=view, ephemeral=True)


async def setup(bot: commands.Bot) -> None:
    bot.add_dynamic_items(PageButton)
    await bot.add_cog(Gallery(bot))
