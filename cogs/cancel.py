"""The ❌ Cancel button on a job's progress message, and what it answers.

A DynamicItem whose custom_id carries the job id, so it keeps working after a restart. It
acknowledges first, then asks the service to cancel (the job's state lives there, not here):
before the provider call the job is refunded and its own reply says "Cancelled" (a prompt
enhancement or content check that already ran stays charged, and both say how much); after it,
the image is still made, charged, and delivered privately to its owner. Only the owner or an admin
of the server may press it; anyone else gets a private refusal.
"""

from __future__ import annotations

import contextlib
import re
from typing import Any

import discord

from bot.errors import JobCancelled, still_charged
from bot.money import format_usd
from bot.requests import Cancellation
from cogs.common import guarded, guild_key, is_admin, runtime_of
from cogs.delivery import DeliveryError, InteractionLink, LinkClosed

JOB_ID = r"(?P<id>job_[0-9a-f]{20})"
CANCELLED = "❌ Cancelled: nothing was charged."
WITHDRAWN = (
    "❌ Cancelled while it was already generating: the image went to the person who asked, "
    "privately, and it is charged."
)
STOPPED = "⏹️ This job stopped before it finished (the bot restarted) and was refunded."


def cancelled_text(cancelled: JobCancelled) -> str:
    """The job's own reply once cancelled: what stays charged, if anything ran before it."""
    return f"❌ {cancelled.user_message}" if cancelled.paid_micro_usd else CANCELLED


def cancel_view(job_id: str) -> discord.ui.View:
    view = discord.ui.View(timeout=None)
    view.add_item(CancelButton(job_id))
    return view


def answer(done: Cancellation, requester_id: str) -> str:
    """The presser's private answer."""
    own = done.user_id == requester_id
    if done.outcome == "cancelled":
        released = f" (the {format_usd(done.refunded_micro_usd)} reserved is released)"
        head = f"❌ Cancelled{released if done.refunded_micro_usd else ''}"
        if done.charged_micro_usd:  # it ran and was billed before the image was cancelled
            kept = still_charged(done.charged_micro_usd, done.charged_for)
            return f"{head}: the image is not charged; {kept}."
        return f"{head}: nothing is charged."
    if done.outcome == "too_late":
        if own:
            return "Already generating — you'll still get the image privately, and it is charged."
        return ("Already generating — its owner still gets the image privately, and it is "
                "charged.")  # fmt: skip
    if done.outcome == "already":
        return "This job was already cancelled."
    if done.state == "settled":
        return "This job already finished."
    return "This job is no longer running: it was stopped and refunded, nothing was charged."


async def show_cancelled(link: InteractionLink, text: str = CANCELLED) -> None:
    """The job's own reply says it was cancelled (best effort: the token may be gone)."""
    with contextlib.suppress(LinkClosed, *DeliveryError):
        await link.edit(content=text, embeds=[], attachments=[], view=None)


class CancelButton(
    discord.ui.DynamicItem[discord.ui.Button[Any]], template=rf"job:cancel:{JOB_ID}"
):
    def __init__(self, job_id: str) -> None:
        super().__init__(
            discord.ui.Button(
                label="Cancel",
                emoji="❌",
                style=discord.ButtonStyle.danger,
                custom_id=f"job:cancel:{job_id}",
            )
        )
        self.job_id = job_id

    @classmethod
    async def from_custom_id(
        cls, interaction: discord.Interaction, item: discord.ui.Item[Any], match: re.Match[str]
    ) -> CancelButton:
        return cls(match["id"])

    @guarded
    async def callback(self, interaction: discord.Interaction) -> None:
        """Acknowledged first; a refusal or any error is answered privately."""
        await interaction.response.defer()
        user = str(interaction.user.id)
        done = await runtime_of(interaction).service.cancel_job(
            self.job_id, requester_id=user, guild_id=guild_key(interaction),
            is_admin=is_admin(interaction),
        )  # fmt: skip
        await interaction.followup.send(answer(done, user), ephemeral=True)
        if done.outcome in ("ended", "already") and done.state == "refunded":
            # Nothing runs this job any more (a restart stopped it): the stale button goes.
            text = CANCELLED if done.outcome == "already" else STOPPED
            await show_cancelled(InteractionLink.of(interaction), text)
