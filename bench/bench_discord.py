"""Discord front benchmarks through the real discord.py client against the fake Discord.

Run: .venv/bin/python bench/bench_discord.py   (about a minute; loopback only)

1. A burst of 500 /imagine at once with a 2 s provider: time from dispatch to the defer.
2. A steady 50 /imagine a second for 30 s (2 s provider): p99 dispatch → defer.
3. Throughput with zero-latency fakes and 256×256 images: completed /imagine per second
   through the client, and generations per second through the service alone.
"""

from __future__ import annotations

import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from common import GENEROUS, SDXL, SleepyProvider, pct

from bot.config import load_settings
from bot.discord_bot import ImageBot
from bot.requests import GenerateRequest
from bot.runtime import open_runtime
from tests.fakes.discord import BotHarness, FakeDiscord, patched_discord_endpoints


async def with_bot(latency: float, body):  # type: ignore[no-untyped-def]
    from bot import imaging

    image = imaging.render_preview("bench", seed=1, width=256, height=256)
    with tempfile.TemporaryDirectory() as folder:
        settings = load_settings({"DATA_DIR": folder, **GENEROUS})
        async with open_runtime(settings) as runtime:
            runtime.service.provider = SleepyProvider(latency, image)
            # Hundreds of jobs in one channel exceed Discord's channel-wide limit on message
            # edits; these figures measure the bot itself, so that limit is off (the per-token
            # limits stay on).
            async with (
                FakeDiscord(channel_rate=None) as fake,
                patched_discord_endpoints(fake),
                BotHarness(fake) as harness,
            ):
                await harness.start(ImageBot(runtime))
                return await body(fake, runtime)


def options(n: int) -> dict[str, object]:
    return {"prompt": f"benchmark picture {n}", "model": SDXL, "width": 256, "height": 256}


async def burst(fake: FakeDiscord, runtime: object, count: int = 500) -> dict[str, float]:
    interactions = await asyncio.gather(
        *(fake.slash("imagine", options(n), user=fake.member) for n in range(count))
    )
    await asyncio.gather(*(i.wait_for_callback(timeout=60) for i in interactions))
    latencies = [i.latency * 1000 for i in interactions]
    await asyncio.gather(*(i.wait_for_message(lambda m: bool(m.embeds), timeout=300)
                           for i in interactions))  # fmt: skip
    return {
        "count": count,
        "late_over_3s": sum(lat > 3000 for lat in latencies),
        "p99_ms": pct(latencies, 0.99),
        "max_ms": max(latencies),
    }


async def steady(fake: FakeDiscord, runtime: object, rate: int = 50, seconds: int = 30):  # type: ignore[no-untyped-def]
    interactions = []
    start = time.perf_counter()
    for n in range(rate * seconds):
        target = start + n / rate
        await asyncio.sleep(max(0.0, target - time.perf_counter()))
        interactions.append(
            asyncio.create_task(fake.slash("imagine", options(n), user=fake.member))
        )
    dispatched = await asyncio.gather(*interactions)
    await asyncio.gather(*(i.wait_for_callback(timeout=60) for i in dispatched))
    latencies = [i.latency * 1000 for i in dispatched]
    await asyncio.gather(*(i.wait_for_message(lambda m: bool(m.embeds), timeout=300)
                           for i in dispatched))  # fmt: skip
    return {"count": len(dispatched), "median_ms": statistics.median(latencies),
            "p99_ms": pct(latencies, 0.99), "max_ms": max(latencies)}  # fmt: skip


async def throughput_client(fake: FakeDiscord, runtime: object, count: int = 600):  # type: ignore[no-untyped-def]
    start = time.perf_counter()
    interactions = await asyncio.gather(
        *(fake.slash("imagine", options(n), user=fake.member) for n in range(count))
    )
    await asyncio.gather(*(i.wait_for_message(lambda m: bool(m.embeds), timeout=300)
                           for i in interactions))  # fmt: skip
    return {"completed_per_second": count / (time.perf_counter() - start)}


async def throughput_service(count: int = 3000) -> dict[str, float]:
    from bot import imaging

    image = imaging.render_preview("bench", seed=1, width=256, height=256)
    with tempfile.TemporaryDirectory() as folder:
        async with open_runtime(load_settings({"DATA_DIR": folder, **GENEROUS})) as runtime:
            runtime.service.provider = SleepyProvider(0.0, image)
            start = time.perf_counter()
            await asyncio.gather(*(
                runtime.service.generate(GenerateRequest(
                    prompt=f"service picture {n}", user_id=f"u{n % 50}", guild_id="g",
                    model=SDXL, width=256, height=256))
                for n in range(count)
            ))  # fmt: skip
            return {"completed_per_second": count / (time.perf_counter() - start)}


async def main() -> None:
    def show(name: str, figures: dict[str, float]) -> None:
        print(f"{name}: " + ", ".join(f"{k} {v:,.1f}" for k, v in figures.items()), flush=True)

    show("burst of 500 /imagine (provider 2 s), dispatch → defer", await with_bot(2.0, burst))
    show("steady 50 /imagine per second for 30 s (provider 2 s), dispatch → defer",
         await with_bot(2.0, steady))  # fmt: skip
    show("throughput through the real client (zero latency, 256×256)",
         await with_bot(0.0, throughput_client))  # fmt: skip
    show("throughput through the service alone (zero latency, 256×256)",
         await throughput_service())  # fmt: skip


if __name__ == "__main__":
    asyncio.run(main())
