"""The client's connections to Discord: the bot's connector has a per-host limit, and a burst of
interactions then reuses at most that many kept-alive connections instead of opening a socket
per request (the real discord.py client against the fake Discord, which keeps connections alive
as Discord does)."""

from __future__ import annotations

import asyncio

from bot.discord_bot import DISCORD_CONNECTIONS_PER_HOST, ImageBot, discord_connector
from bot.runtime import open_runtime

SMALL = {"model": "@cf/stabilityai/stable-diffusion-xl-base-1.0", "width": 256, "height": 256}
LIMIT = 8  # small, so the burst that must stay within it is quick
JOBS = 3 * LIMIT


async def test_the_bot_limits_its_connections_per_host(bot_harness, local_runtime):
    bot = await bot_harness.start(ImageBot(local_runtime))
    assert bot.http.connector.limit_per_host == DISCORD_CONNECTIONS_PER_HOST
    assert bot.http.connector.limit == 0  # the gateway's websocket never waits for REST


async def test_a_burst_stays_within_the_connection_limit(
    fake_discord, bot_harness, make_settings
):
    users = [fake_discord.add_user(f"burst{n}") for n in range(8)]
    # Spread as real traffic is, so Discord's per-channel limits do not serialise the burst.
    guilds = [fake_discord.add_guild(f"Burst {n}", ["a", "b"]) for n in range(4)]
    places = [(g, c) for g in guilds for c in g.channels]
    settings = make_settings(QUOTA_USER_DAILY_IMAGES="1000", MAX_JOBS_PER_USER="64")
    async with open_runtime(settings) as runtime:
        await bot_harness.start(ImageBot(runtime, connector=discord_connector(LIMIT)))
        before = len(fake_discord.requests)
        made = await asyncio.gather(*(
            fake_discord.slash("imagine", {"prompt": f"a burst {n}", **SMALL},
                               user=users[n % len(users)], guild=places[n % len(places)][0],
                               channel=places[n % len(places)][1])
            for n in range(JOBS)
        ))  # fmt: skip
        await asyncio.gather(*(m.wait_for_message(lambda m: bool(m.embeds), 120) for m in made))
        burst = fake_discord.requests[before:]
        assert len(burst) >= 2 * JOBS  # a defer and a result each
        # Every request went over a connection; no more than the limit were ever open.
        peers = {r.peer for r in fake_discord.requests}
        assert None not in peers
        assert len(peers) <= LIMIT
        assert not fake_discord.errors
