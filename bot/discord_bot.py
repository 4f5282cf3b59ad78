"""The Discord front's bot object: kept thin, everything handed in, cogs from an explicit list.

``ImageTree.on_error`` is the one place domain errors become a short ephemeral reply and
anything unexpected is logged with a reference id the user can quote. Nothing the bot sends
pings anyone unless it says so (``AllowedMentions.none()`` is the client default), and the
commands are offered only where the operator allows (servers; DMs and user installs when
``DISCORD_ALLOW_DMS`` / ``DISCORD_ALLOW_USER_INSTALL`` say so), checked here too. With
``SHARD_COUNT`` the bot is discord.py's AutoShardedBot running ``SHARD_IDS``; only the process
holding shard 0 syncs the commands (``sync_only`` is ``python -m bot sync``).
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from typing import Any

import aiohttp
import discord
from discord import app_commands
from discord.ext import commands

from bot.command_sync import sync_commands
from bot.config import Settings
from bot.errors import BotError, QuotaExceeded
from bot.heap import settle_heap
from bot.loop_probe import loop_lag_probe
from bot.runtime import Runtime
from bot.shutdown import drain, stop_signals
from bot.web.app import start_web_server
from cogs.limits import CONTENT, clip

log = logging.getLogger(__name__)

# Connections per Discord host (REST on discord.com, files on the CDN). discord.py's default
# connector has no limit, so a burst opens a socket per concurrent request (a TLS handshake each
# against the real Discord; a third of the loop stalls the process benchmark named were socket
# set-up); past this many, a request waits for a kept-alive connection instead. Not lower:
# with 32, a burst of 500 interactions had 40-128 defers miss Discord's 3 s (bench_discord).
DISCORD_CONNECTIONS_PER_HOST = 128
# Set in ``interaction.extras`` once Discord said the token is dead (401/404): never use it again.
DEAD_LINK = "interaction_unusable"

# The cog extensions, loaded in this order by setup_hook.
EXTENSIONS: tuple[str, ...] = (
    "cogs.imagine",
    "cogs.library",
    "cogs.templates",
    "cogs.usage",
    "cogs.quota",
    "cogs.channels",
    "cogs.content",
    "cogs.apikeys",
    "cogs.gallery",
    "cogs.queue",
)


def error_text(error: BotError) -> str:
    """A domain error as one short line for Discord (quota errors say when they reset)."""
    if isinstance(error, QuotaExceeded):
        return f"{error.user_message} It resets {discord.utils.format_dt(error.resets_at, 'R')}."
    return error.user_message


async def reply_privately(interaction: discord.Interaction, text: str) -> None:
    """An ephemeral answer at any stage of the interaction.

    After a public defer the first followup would replace the public "thinking" message, so
    that message is deleted first and the answer sent as an ephemeral followup.
    """
    if interaction.extras.get(DEAD_LINK) or interaction.is_expired():
        log.info("interaction %s can no longer be answered; not sent: %s", interaction.id, text)
        return
    text = clip(text, CONTENT)
    try:
        if not interaction.response.is_done():
            await interaction.response.send_message(text, ephemeral=True)
            return
        if interaction.response.type is discord.InteractionResponseType.deferred_channel_message:
            original = await interaction.original_response()
            if not original.flags.ephemeral:
                await original.delete()
        await interaction.followup.send(text, ephemeral=True)
    except discord.HTTPException:
        log.warning("could not send an error reply for interaction %s", interaction.id)


async def report_error(interaction: discord.Interaction, error: BaseException) -> None:
    """The one mapping from an exception to what the user sees (commands and buttons alike)."""
    cause = error.original if isinstance(error, app_commands.CommandInvokeError) else error
    if isinstance(cause, BotError):
        await reply_privately(interaction, error_text(cause))
    elif isinstance(cause, app_commands.CheckFailure):
        await reply_privately(interaction, str(cause) or "You cannot use this command here.")
    elif isinstance(cause, app_commands.TransformerError):
        await reply_privately(interaction, "One of the values you gave is not valid.")
    else:
        reference = secrets.token_hex(4)
        log.error("unexpected error (reference %s)", reference, exc_info=cause)
        await reply_privately(
            interaction, f"Something went wrong on our side (reference `{reference}`)."
        )


def place_refusal(interaction: discord.Interaction, settings: Settings) -> str | None:
    """Why a command may not run where it was used (None: it may). Discord already hides the
    commands there; this holds even if a client shows an old copy of them."""
    user_install_only = interaction.is_user_integration() and not interaction.is_guild_integration()
    if user_install_only and not settings.discord_allow_user_install:
        return "This bot works only in servers that added it."
    if interaction.context.dm_channel and not settings.discord_allow_dms:
        return "This bot works in servers, not in DMs."
    return None


def command_places(settings: Settings) -> tuple[app_commands.AppCommandContext,
                                                app_commands.AppInstallationType]:  # fmt: skip
    """Where the commands are offered by default: servers, plus what the settings turn on."""
    users = settings.discord_allow_user_install
    contexts = app_commands.AppCommandContext(
        guild=True, dm_channel=settings.discord_allow_dms, private_channel=users
    )
    return contexts, app_commands.AppInstallationType(guild=True, user=users)


def discord_connector(per_host: int = DISCORD_CONNECTIONS_PER_HOST) -> aiohttp.TCPConnector:
    """The client's HTTP connector: discord.py's (no total limit, so the gateway's websocket
    never waits) with a per-host limit (``DISCORD_CONNECTIONS_PER_HOST``)."""
    return aiohttp.TCPConnector(limit=0, limit_per_host=per_host)


class ImageTree(app_commands.CommandTree[Any]):
    async def interaction_check(self, interaction: discord.Interaction, /) -> bool:
        refusal = place_refusal(interaction, self.client.runtime.settings)
        if refusal is None:
            return True
        if interaction.type is discord.InteractionType.autocomplete:
            return False  # no choices; the command itself answers with the reason
        raise app_commands.CheckFailure(refusal)

    async def on_error(
        self, interaction: discord.Interaction, error: app_commands.AppCommandError
    ) -> None:
        await report_error(interaction, error)


class ImageBot(commands.Bot):
    """The bot on one gateway connection (``ShardedImageBot`` runs shards). ``sync`` None
    syncs the commands only where the settings say (shard 0's process, or no sharding);
    ``settle`` (the process's own bot, not tests') freezes the start-up heap in setup_hook."""

    def __init__(
        self,
        runtime: Runtime,
        extensions: tuple[str, ...] = EXTENSIONS,
        *,
        sync: bool | None = None,
        settle: bool = False,
        **options: Any,
    ) -> None:
        contexts, installs = command_places(runtime.settings)
        if "connector" not in options:
            options["connector"] = discord_connector()
        super().__init__(
            command_prefix=commands.when_mentioned,
            intents=discord.Intents.default(),
            help_command=None,
            tree_cls=ImageTree,
            allowed_mentions=discord.AllowedMentions.none(),
            allowed_contexts=contexts,
            allowed_installs=installs,
            http_trace=runtime.metrics.discord_trace(),  # counts Discord's 429s for /metrics
            **options,
        )
        self.runtime = runtime
        self._extensions = extensions
        self._sync = runtime.settings.syncs_commands if sync is None else sync
        self._settle = settle  # the process's own bot: tune its collector (bot/heap.py)

    async def close(self) -> None:
        """Let running jobs finish (or refund them after SHUTDOWN_GRACE_SECONDS), then
        disconnect: results still being made are delivered before the gateway closes."""
        await drain(self.runtime.service, self.runtime.settings.shutdown_grace_seconds)
        await super().close()

    async def setup_hook(self) -> None:
        self.runtime.service.closing = False  # a bot started on a drained service reopens it
        for extension in self._extensions:
            await self.load_extension(extension)
        settings = self.runtime.settings
        if self._sync:
            await sync_commands(self.tree, settings.data_dir, settings.discord_guild_id)
        else:
            log.info("commands: left to the process holding shard 0 (or 'python -m bot sync')")
        if self._settle:
            # Start-up is done (imports, settings, catalog, cogs) and the gateway is not yet
            # connected, so the one full collection here delays no interaction.
            settle_heap()


class ShardedImageBot(ImageBot, commands.AutoShardedBot):
    """The bot running SHARD_IDS of SHARD_COUNT shards (discord.py's AutoShardedBot): Discord
    sends each shard the servers with ``(guild_id >> 22) % SHARD_COUNT == shard``, DMs to 0."""

    def __init__(
        self, runtime: Runtime, extensions: tuple[str, ...] = EXTENSIONS, **options: Any
    ) -> None:
        settings = runtime.settings
        ids = list(settings.shard_ids) if settings.shard_ids is not None else None
        super().__init__(
            runtime, extensions, shard_count=settings.shard_count, shard_ids=ids, **options
        )


def make_bot(runtime: Runtime, **options: Any) -> ImageBot:
    """The bot the settings ask for: sharded when SHARD_COUNT is set, else one connection."""
    if runtime.settings.shard_count is not None:
        return ShardedImageBot(runtime, **options)
    return ImageBot(runtime, **options)


async def sync_only(runtime: Runtime) -> list[str]:
    """``python -m bot sync``: log in over REST (no gateway), sync the commands if their schema
    changed, and stop. Returns the scopes written."""
    token = runtime.settings.discord_token
    assert token is not None
    bot = ImageBot(runtime, sync=False)
    async with bot:
        await bot.login(token)  # runs setup_hook: the cogs load, nothing is synced there
        settings = runtime.settings
        return await sync_commands(bot.tree, settings.data_dir, settings.discord_guild_id)


async def run_discord(runtime: Runtime) -> None:
    """Run the bot and the built-in web server until SIGINT/SIGTERM or the bot closes."""
    token = runtime.settings.discord_token
    assert token is not None
    runner = await start_web_server(runtime)
    bot = make_bot(runtime, settle=True)
    closing: list[asyncio.Task[None]] = []  # held, so the close is not collected mid-way
    try:
        with stop_signals(lambda: closing.append(asyncio.create_task(bot.close()))):
            async with loop_lag_probe(runtime.settings.loop_lag_probe), bot:
                await bot.start(token)
            await asyncio.gather(*closing)
    finally:
        await runner.cleanup()
