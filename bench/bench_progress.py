"""Progress edits of 50 /imagine in one channel, through the real client and the fake Discord.

Run: .venv/bin/python bench/bench_progress.py   (about 30 s; loopback only)

50 users each ask for one image in the same channel at once; 8 run at a time (the default
MAX_CONCURRENT_JOBS), the provider takes 3 s. Counted from what the fake received: progress
edits (edits of a reply without the result's embeds) per job and in the channel, the busiest
second and five seconds of edits in the channel (results included), 429s, and results shown.
"""

from __future__ import annotations

import asyncio
import itertools
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from common import GENEROUS, SDXL, SleepyProvider

from bot.config import load_settings
from bot.discord_bot import ImageBot
from bot.runtime import open_runtime
from tests.fakes.discord import BotHarness, FakeDiscord, FakeInteraction, patched_discord_endpoints

JOBS = 50
PROVIDER_SECONDS = 3.0


def busiest(times: list[float], window: float) -> int:
    """The most events within any ``window`` seconds."""
    ordered = sorted(times)
    start, best = 0, 0
    for end, moment in enumerate(ordered):
        while moment - ordered[start] > window:
            start += 1
        best = max(best, end - start + 1)
    return best


def shown(interaction: FakeInteraction, fake: FakeDiscord) -> bool:
    """The result reached the user: on the reply, or posted in the channel / DM for them."""
    if interaction.embeds:
        return True
    user = str(interaction.payload["member"]["user"]["id"])
    return any(
        user in m.content and m.embeds for m in fake.messages.values() if not m.interaction_id
    )


async def run() -> dict[str, float]:
    from bot import imaging

    image = imaging.render_preview("bench", seed=1, width=256, height=256)
    env = {**GENEROUS, "MAX_CONCURRENT_JOBS": "8", "MAX_JOBS_PER_USER": "2"}
    with tempfile.TemporaryDirectory() as folder:
        async with open_runtime(load_settings({"DATA_DIR": folder, **env})) as runtime:
            runtime.service.provider = SleepyProvider(PROVIDER_SECONDS, image)
            async with (
                FakeDiscord() as fake,
                patched_discord_endpoints(fake),
                BotHarness(fake) as harness,
            ):
                users = [fake.add_user(f"user{n}") for n in range(JOBS)]
                await harness.start(ImageBot(runtime))
                interactions = await asyncio.gather(*(
                    fake.slash("imagine", {"prompt": f"progress picture {n}", "model": SDXL,
                                           "width": 256, "height": 256}, user=user)
                    for n, user in enumerate(users)
                ))  # fmt: skip
                await asyncio.gather(*(
                    i.wait_until(lambda i=i: shown(i, fake), timeout=120) for i in interactions
                ))  # fmt: skip
                await asyncio.sleep(1.0)  # let any late edit arrive before counting
                edits = [[e for e in i.events if e.kind == "edit"] for i in interactions]
                progress = [[e for e in job if not e.body.get("embeds")] for job in edits]
                per_job = [len(job) for job in progress]
                times = [e.at for e in itertools.chain.from_iterable(edits)]
                return {
                    "results_shown": sum(shown(i, fake) for i in interactions),
                    "progress_edits_in_channel": sum(per_job),
                    "progress_edits_per_job_mean": statistics.mean(per_job),
                    "progress_edits_per_job_max": max(per_job),
                    "edits_in_busiest_second": busiest(times, 1.0),
                    "edits_in_busiest_5s": busiest(times, 5.0),
                    "rate_limited_429": getattr(fake, "rate_limited", 0),
                }


async def main() -> None:
    figures = await run()
    print(f"{JOBS} /imagine in one channel (provider {PROVIDER_SECONDS:.0f} s, 8 at a time): "
          + ", ".join(f"{k} {v:,.1f}" for k, v in figures.items()), flush=True)  # fmt: skip


if __name__ == "__main__":
    asyncio.run(main())
