"""The fake Discord or the fake Cloudflare as a process of its own, for bench_process.py.

Run: .venv/bin/python bench/fake_services.py discord [SHARDS]|cloudflare
(with SHARDS the fake Discord spreads its guilds evenly over that many shards).
It prints one JSON line with its addresses, then answers one JSON line per command line on
stdin (``{"op": ...}``): ``burst`` (discord: dispatch ``count`` /imagine from ``users`` users
spread over every channel, wait for every result, report the time and the requests by kind),
``counts`` (the requests seen so far), ``ready`` (discord: whether the bot has synced, and
with SHARDS whether every shard is connected and has its guilds).
"""

from __future__ import annotations

import asyncio
import json
import re
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.fakes.cloudflare import FakeCloudflare
from tests.fakes.discord import FakeDiscord, FakeInteraction

SDXL = "@cf/stabilityai/stable-diffusion-xl-base-1.0"
CF_TOKEN = "bench-cloudflare-token"
GUILDS, CHANNELS_PER_GUILD, USERS = 10, 2, 20
_IDS = re.compile(r"/\d+|/[A-Za-z0-9_.-]{40,}")


def kind_of(method: str, path: str) -> str:
    """A request as its route without ids or tokens, e.g. 'PATCH /webhooks/:/:/messages/:'."""
    path = re.sub(r"^/client/v4/accounts/[^/]+", "", path.removeprefix("/api/v10"))
    return f"{method} " + _IDS.sub("/:", path)


async def lines() -> Any:
    reader = asyncio.StreamReader()
    loop = asyncio.get_running_loop()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    while line := await reader.readline():
        yield json.loads(line)


def say(payload: dict[str, Any]) -> None:
    print(json.dumps(payload), flush=True)


def all_shards_ready(fake: FakeDiscord, shards: int) -> bool:
    """Every shard has a live connection past READY (its guilds were sent)."""
    return all(any(len(s.dispatched) > 1 for s in fake.sessions(n)) for n in range(shards))


async def run_discord(shards: int | None) -> None:
    # Several guilds and channels, as real traffic is spread; Discord's limits all stay on.
    async with FakeDiscord() as fake:
        for n in range(1, GUILDS):
            on = (n % shards, shards) if shards else None  # the default guild: either shard
            fake.add_guild(f"Server {n}", [f"c{i}" for i in range(CHANNELS_PER_GUILD)], shard=on)
        users = [fake.add_user(f"user{n}") for n in range(USERS)]
        say({"base_url": fake.base_url, "token": fake.token})
        async for command in lines():
            if command["op"] == "ready":
                shards_ok = all_shards_ready(fake, shards) if shards else True
                say({"ready": fake.sync_count > 0 and fake.connected and shards_ok})
            elif command["op"] == "counts":
                say(counts(fake, 0))
            elif command["op"] == "burst":
                say(await burst(fake, users, command["count"]))


def counts(fake: FakeDiscord, since: int) -> dict[str, Any]:
    """Requests since ``since`` by kind, 429s, and the TCP connections the client opened for
    them (peers not seen before: a kept-alive connection is not counted again)."""
    seen, before = fake.requests[since:], {r.peer for r in fake.requests[:since]}
    return {"requests": dict(Counter(kind_of(r.method, r.path) for r in seen)),
            "status_429": sum(r.status == 429 for r in seen),
            "connections": len({r.peer for r in seen} - before)}  # fmt: skip


async def burst(fake: FakeDiscord, users: list[Any], count: int) -> dict[str, Any]:
    channels = [(g, c) for g in fake.guilds for c in g.channels]
    since = len(fake.requests)
    start = time.perf_counter()

    async def one(n: int) -> FakeInteraction:
        guild, channel = channels[n % len(channels)]
        options = {"prompt": f"process bench {n} {start}", "model": SDXL,
                   "width": 256, "height": 256}  # fmt: skip
        return await fake.slash("imagine", options, user=users[n % len(users)], guild=guild,
                                channel=channel)  # fmt: skip

    interactions = await asyncio.gather(*(one(n) for n in range(count)))
    await asyncio.gather(*(i.wait_for_message(lambda m: bool(m.embeds), timeout=300)
                           for i in interactions))  # fmt: skip
    seconds = time.perf_counter() - start
    latencies = sorted((i.latency or 0) * 1000 for i in interactions)
    return {"count": count, "seconds": seconds, "ack_p99_ms": latencies[int(0.99 * count) - 1],
            **counts(fake, since)}  # fmt: skip


async def run_cloudflare() -> None:
    async with FakeCloudflare(api_token=CF_TOKEN) as fake:
        # Neither the account limit nor Workers AI's per-minute run limits are what the benches
        # measure (their phases run back to back against this one fake, each with a new ledger,
        # so the bot's own shared budgets start afresh while the fake would still count).
        fake.account_limit = fake.run_limit = fake.img2img_run_limit = 10**9
        say({"api_base": fake.api_base, "delivery_base": fake.delivery_base,
             "account_id": fake.account_id, "account_hash": fake.account_hash,
             "token": CF_TOKEN})  # fmt: skip
        async for command in lines():
            if command["op"] == "counts":
                kinds = Counter(kind_of(c.method, c.path.split("?")[0]) for c in fake.calls)
                say({"requests": dict(kinds), "total": len(fake.calls)})
            elif command["op"] == "reset":
                fake.calls.clear()
                say({"ok": True})


if __name__ == "__main__":
    if sys.argv[1] == "discord":
        asyncio.run(run_discord(int(sys.argv[2]) if len(sys.argv) > 2 else None))
    else:
        asyncio.run(run_cloudflare())
