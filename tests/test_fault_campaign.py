"""The fault campaign, sized for CI: many /imagine from many users, through the real Discord
client, while the fake Cloudflare fails 30% of calls in every way it knows.

Afterwards: every interaction got exactly one final reply; the ledger's total equals the sum of
the recorded prices of the images people received, to the micro-dollar; nobody ended over a
quota; nothing is left reserved. (A longer soak: RELIABILITY.md.)
"""

from __future__ import annotations

import asyncio
import os
import random

from bot.discord_bot import ImageBot
from bot.runtime import open_runtime

SDXL_LIGHTNING = "@cf/bytedance/stable-diffusion-xl-lightning"
REQUESTS = int(os.environ.get("CAMPAIGN_REQUESTS", "300"))
USERS = 50
USER_DAILY_IMAGES = int(os.environ.get("CAMPAIGN_USER_IMAGES", "5"))
GUILD_DAILY_USD = os.environ.get("CAMPAIGN_GUILD_USD", "0.10")  # the server budget binds too


def visible(interaction):
    return [m for m in interaction.messages if not m.deleted and not m.loading]


def final_messages(interaction):
    """A final reply is a result (embeds) or a private error; progress is not one."""
    return [m for m in visible(interaction) if m.embeds or m.ephemeral]


async def test_fault_campaign_keeps_every_promise(
    fake_discord, bot_harness, fake_cloudflare, make_settings, cloudflare_env
):
    fake_cloudflare.fault_rate = 0.3
    fake_cloudflare.fault_kinds = ("429", "500", "3040", "timeout", "malformed", "3030")
    fake_cloudflare.hang_seconds = 3.0  # a 'timeout' hangs past the client's 1 s read timeout
    settings = make_settings(
        **cloudflare_env,
        CLOUDFLARE_TIMEOUT_SECONDS=1,
        QUOTA_USER_DAILY_IMAGES=USER_DAILY_IMAGES,
        QUOTA_GUILD_DAILY_USD=GUILD_DAILY_USD,
        MAX_QUEUE=5000,
        MAX_CONCURRENT_JOBS=32,
    )
    rng = random.Random(2026)
    # 300 jobs in one channel exceed Discord's channel-wide limit on message edits (the fake's
    # 50 per 10 s): the bot does not coalesce progress edits per channel yet (issue 8, item 4),
    # and this campaign is about Cloudflare's faults, so the channel limit is off here.
    fake_discord.channel_rate = None
    async with open_runtime(settings) as runtime:
        await bot_harness.start(ImageBot(runtime))
        users = [fake_discord.add_user(f"user{n}") for n in range(USERS)]
        interactions = await asyncio.gather(*(
            fake_discord.slash(
                "imagine",
                {"prompt": f"campaign picture {n}",
                 **({"model": SDXL_LIGHTNING, "width": 256, "height": 256}
                    if n % 3 == 0 else {})},
                user=users[rng.randrange(USERS)],
            )
            for n in range(REQUESTS)
        ))  # fmt: skip
        await asyncio.gather(*(i.wait_for_callback(timeout=30) for i in interactions))
        assert all(i.callback_type == 5 for i in interactions)

        async def settled(interaction) -> None:
            await interaction.wait_until(lambda: len(final_messages(interaction)) >= 1, 600)

        await asyncio.gather(*(settled(i) for i in interactions))
        await asyncio.sleep(0.5)  # anything late would show up as a second reply

        received = []
        outcomes = {"image": 0, "error": 0}
        for interaction in interactions:
            finals = final_messages(interaction)
            assert len(finals) == 1 == len(visible(interaction)), [
                m.content for m in visible(interaction)
            ]
            [message] = finals
            if message.embeds:
                outcomes["image"] += 1
                received += [e["footer"]["text"] for e in message.embeds]
            else:
                outcomes["error"] += 1
                assert message.ephemeral and message.content, message.content
                assert "Traceback" not in message.content
        print(f"campaign: {REQUESTS} /imagine, {outcomes}, "
              f"{fake_cloudflare.ai_calls} provider calls")  # fmt: skip
        assert outcomes["image"] > 0 and outcomes["error"] > 0

        ledger = runtime.ledger
        assert await ledger.audit() == {"counter_mismatches": 0, "open_jobs": 0}
        images = await ledger.images_by_ids(received)
        assert len(images) == len(received)
        report = await ledger.report(ledger.today(), ledger.today())
        assert report.total_micro_usd == sum(i.cost_micro_usd for i in images)
        assert report.total_images == sum(not i.cached for i in images)
        guild = str(fake_discord.guild.id)
        guild_report = await ledger.report(ledger.today(), ledger.today(), guild_id=guild)
        assert guild_report.total_micro_usd <= int(float(GUILD_DAILY_USD) * 1_000_000)
        for user in guild_report.users:
            assert user.images <= USER_DAILY_IMAGES
