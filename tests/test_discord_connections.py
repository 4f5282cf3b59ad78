"""The client's connections to Discord: a burst of interactions reuses at most
DISCORD_CONNECTIONS_PER_HOST kept-alive connections instead of opening one socket per request
(the real discord.py client against the fake Discord, which keeps connections alive as
Discord does)."""

from __future__ import annotations

import asyncio

from bot.discord_bot import DISCORD_CONNECTIONS_PER_HOST, ImageBot
from bot.runtime import open_runtime

SMALL = {"model": "@cf/stabilityai/stable-diffusion-xl-base-1.0", "width": 256, "height": 256}
JOBS = DISCORD_CONNECTIONS_PER_HOST + 16


async def test_a_burst_stays_within_the_connection_limit(
    fake_discord, bot_harness, make_settings
):
    users = [fake_discord.add_user(f"burst{n}") for n in range(8)]
    # Spread as real traffic is, so Discord's per-channel limits do not serialise the burst.
    guilds = [fake_discord.add_guild(f"Burst {n}", ["a", "b"]) for n in range(4)]
    places = [(g, c) for g in guilds for c in g.channels]
    settings = make_settings(QUOTA_USER_DAILY_IMAGES="1000", MAX_JOBS_PER_USER="64")
    async with open_runtime(settings) as runtime:
        bot = await bot_harness.start(ImageBot(runtime))
        assert bot.http.connector.limit_per_host == DISCORD_CONNECTIONS_PER_HOST
        before = len(fake_discord.requests)
        made = await asyncio.gather(*(
            fake_discord.slash("imagine", {"prompt": f"a burst {n}", **SMALL},
                               user=users[n % len(users)], guild=places[n % len(places)][0],
                               channel=places[n % len(places)][1])
            for n in range(JOBS)
        ))  # fmt: skip
        await asyncio.gather(*(m.wait_for_message(lambda m: bool(m.embeds), 60) for m in made))
        burst = fake_discord.requests[before:]
        assert len(burst) >= 2 * JOBS  # a defer and a result each
        # Every request went over a connection; no more than the limit were ever open.
        peers = {r.peer for r in fake_discord.requests}
        assert None not in peers
        assert len(peers) <= DISCORD_CONNECTIONS_PER_HOST
        assert not fake_discord.errors
