"""/queue: your jobs in this server (state, place in the queue, ETA) and the server's queue.

Answered from memory (the service's live jobs and the scheduler's line), so it needs no defer;
always private. ETAs are Discord relative timestamps from a moving average of recent jobs.
"""

from __future__ import annotations

import discord
from discord import app_commands
from discord.ext import commands

from bot.requests import QueuedJob, QueueStatus
from bot.runtime import Runtime
from cogs.common import bot_runtime, guild_key
from cogs.limits import CONTENT, cut_lines, shown
from cogs.render import model_name

STAGES = {"queued": "⏳ waiting", "generating": "🎨 generating", "storing": "📦 saving"}


def job_line(runtime: Runtime, job: QueuedJob, waiting_all: int) -> str:
    place = f", place **{job.position}** of {waiting_all}" if job.position is not None else ""
    cancelled = " (cancelled: it comes to you privately)" if job.withdrawn else ""
    ready = discord.utils.format_dt(job.eta, "R")
    return (f"{STAGES.get(job.stage, job.stage)}{place}, ready {ready}{cancelled} · "
            f"{model_name(runtime.catalog, job.model)} · {shown(job.prompt, 60)}")  # fmt: skip


def queue_text(runtime: Runtime, status: QueueStatus, in_server: bool) -> str:
    here, where = ("this server", "This server") if in_server else ("DMs", "DMs")
    title = f"**Your jobs in {here}**" if status.jobs else f"You have no jobs running in {here}."
    lines = [title]
    footer = (f"{where}: **{status.waiting_here}** waiting, "
              f"**{status.running_here}** generating; the bot's whole queue: "
              f"**{status.waiting_all}** waiting.")  # fmt: skip
    jobs = [job_line(runtime, job, status.waiting_all) for job in status.jobs]
    body = cut_lines(jobs, CONTENT - len(lines[0]) - len(footer) - 2)
    return "\n".join([*lines, *([body] if body else []), footer])


class Queue(commands.Cog):
    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime

    @app_commands.command(name="queue", description="Your jobs waiting or running here")
    async def queue(self, interaction: discord.Interaction) -> None:
        status = self.runtime.service.queue_status(str(interaction.user.id), guild_key(interaction))
        text = queue_text(self.runtime, status, interaction.guild_id is not None)
        await interaction.response.send_message(text, ephemeral=True)


async def setup(bot: commands.Bot) -> None:
    await bot.add_cog(Queue(bot_runtime(bot)))
