"""Small helpers every cog shares: who is asking, where, and whether they are an admin."""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

import discord
from discord import app_commands

from bot.runtime import Runtime

T = TypeVar("T")
ADMIN_REFUSAL = "Only server admins (Manage Server) can do this."


def runtime_of(interaction: discord.Interaction) -> Runtime:
    runtime: Runtime = interaction.client.runtime  # type: ignore[attr-defined]
    return runtime


def guild_key(interaction: discord.Interaction) -> str:
    """The ledger's id for where this happens: the server id, or '' in DMs."""
    return str(interaction.guild_id) if interaction.guild_id else ""


def is_admin(interaction: discord.Interaction) -> bool:
    """Manage Server in this server (checked here, not only via default_permissions), or one
    of BOT_ADMIN_IDS anywhere."""
    if interaction.user.id in runtime_of(interaction).settings.admin_ids:
        return True
    permissions = interaction.permissions
    return bool(interaction.guild_id) and (permissions.manage_guild or permissions.administrator)


def admin_only() -> Callable[[T], T]:
    """A check for admin-only commands; the tree's on_error turns the refusal into a reply."""

    def predicate(interaction: discord.Interaction) -> bool:
        if not is_admin(interaction):
            raise app_commands.CheckFailure(ADMIN_REFUSAL)
        return True

    return app_commands.check(predicate)


def guild_only_check() -> Callable[[T], T]:
    def predicate(interaction: discord.Interaction) -> bool:
        if not interaction.guild_id:
            raise app_commands.CheckFailure("This command works in a server, not in DMs.")
        return True

    return app_commands.check(predicate)


def clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"
