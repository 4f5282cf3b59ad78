"""The Discord front's bot object: kept thin, everything handed in, cogs from an explicit list."""

from __future__ import annotations

import asyncio
import logging
import signal

import discord
from discord.ext import commands

from bot.runtime import Runtime
from bot.web.app import start_web_server

log = logging.getLogger(__name__)

# The cog extensions, loaded in this order by setup_hook.
EXTENSIONS: tuple[str, ...] = ()


class ImageBot(commands.Bot):
    def __init__(self, runtime: Runtime, extensions: tuple[str, ...] = EXTENSIONS) -> None:
        super().__init__(
            command_prefix=commands.when_mentioned,
            intents=discord.Intents.default(),
            help_command=None,
        )
        self.runtime = runtime
        self._extensions = extensions

    async def setup_hook(self) -> None:
        for extension in self._extensions:
            await self.load_extension(extension)
        guild_id = self.runtime.settings.discord_guild_id
        if guild_id:
            guild = discord.Object(id=guild_id)
            self.tree.copy_global_to(guild=guild)
            synced = await self.tree.sync(guild=guild)
            log.info("synced %d command(s) to server %d", len(synced), guild_id)
        else:
            synced = await self.tree.sync()
            log.info("synced %d command(s) globally", len(synced))


async def run_discord(runtime: Runtime) -> None:
    """Run the bot and the built-in web server until SIGINT/SIGTERM or the bot closes."""
    token = runtime.settings.discord_token
    assert token is not None
    runner = await start_web_server(runtime)
    bot = ImageBot(runtime)
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, lambda: asyncio.ensure_future(bot.close()))
    try:
        async with bot:
            await bot.start(token)
    finally:
        await runner.cleanup()
