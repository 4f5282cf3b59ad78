"""Overhead ratio, memory under load and start-up time.

Run: .venv/bin/python bench/bench_load.py   (about 40 s; loopback only)

1. Overhead: one request at a time, provider 500 ms, store 50 ms: end-to-end median divided by
   the 550 ms the provider and store take (target ≤ 1.05).
2. Memory: 500 jobs of 1024×1024 in flight at once (each its own ~3 MB of incompressible PNG
   bytes, provider 2 s, the local store writing every file):
   peak RSS of the process (target ≤ 300 MB). Measured first, in a fresh process.
3. Start-up: `python -m bot` as a new process, from its start to the fake Discord receiving the
   command sync (target ≤ 2 s).
"""

from __future__ import annotations

import asyncio
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from common import GENEROUS, SDXL, SleepyProvider, SlowStore  # noqa: E402

from bot import imaging  # noqa: E402
from bot.config import load_settings  # noqa: E402
from bot.requests import GenerateRequest  # noqa: E402
from bot.runtime import open_runtime  # noqa: E402
from bot.stores.local import LocalImageStore  # noqa: E402
from tests.fakes.discord import FakeDiscord  # noqa: E402


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def noise_png(side: int) -> bytes:
    """An incompressible PNG (a few MB), the size real model output can reach."""
    import io

    from PIL import Image

    out = io.BytesIO()
    Image.frombytes("RGB", (side, side), os.urandom(side * side * 3)).save(out, "PNG")
    return out.getvalue()


async def memory(jobs: int = 500, running: int = 32) -> dict[str, float]:
    """500 jobs accepted at once; at most ``running`` hold image bytes at a time (the rest wait
    in the queue, as MAX_CONCURRENT_JOBS makes them in production)."""
    image = noise_png(1024)
    before = peak_rss_mb()
    env = {**GENEROUS, "MAX_CONCURRENT_JOBS": str(running)}
    with tempfile.TemporaryDirectory() as folder:
        async with open_runtime(load_settings({"DATA_DIR": folder, **env})) as runtime:
            runtime.service.provider = SleepyProvider(2.0, image, copy=True)
            await asyncio.gather(*(
                runtime.service.generate(GenerateRequest(
                    prompt=f"memory picture {n}", user_id=f"u{n % 50}", guild_id="g",
                    model=SDXL, width=1024, height=1024))
                for n in range(jobs)
            ))  # fmt: skip
    return {"jobs": jobs, "running": running, "image_kb": len(image) / 1024,
            "peak_rss_mb": peak_rss_mb(), "rss_before_mb": before}  # fmt: skip


async def overhead(requests: int = 20) -> dict[str, float]:
    image = imaging.render_preview("overhead", seed=1, width=256, height=256)
    times = []
    with tempfile.TemporaryDirectory() as folder:
        async with open_runtime(load_settings({"DATA_DIR": folder, **GENEROUS})) as runtime:
            runtime.service.provider = SleepyProvider(0.5, image)
            assert isinstance(runtime.store, LocalImageStore)
            runtime.service.store = SlowStore(runtime.store, 0.05)
            for n in range(requests):
                start = time.perf_counter()
                await runtime.service.generate(GenerateRequest(
                    prompt=f"overhead picture {n}", user_id="u1", guild_id="g"))  # fmt: skip
                times.append(time.perf_counter() - start)
    median = statistics.median(times)
    return {"median_ms": median * 1000, "ratio": median / 0.55}


LAUNCHER = """
import sys, discord, yarl
discord.http.Route.BASE = sys.argv[1] + "/api/v10"
gateway = sys.argv[1].replace("http", "ws") + "/gateway"
discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY = yarl.URL(gateway)
from bot.cli import main
sys.argv = ["python -m bot"]
raise SystemExit(main())
"""


async def startup(runs: int = 3) -> dict[str, float]:
    times = []
    async with FakeDiscord() as fake:
        for _ in range(runs):
            with tempfile.TemporaryDirectory() as folder:
                env = {"PATH": os.environ.get("PATH", ""), "HOME": folder,
                       "DISCORD_TOKEN": fake.token, "DATA_DIR": folder, "WEB_PORT": "0",
                       "PYTHONPATH": str(ROOT)}  # fmt: skip
                synced_before = fake.sync_count
                start = time.perf_counter()
                process = await asyncio.create_subprocess_exec(
                    sys.executable, "-c", LAUNCHER, fake.base_url, cwd=folder, env=env,
                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                )  # fmt: skip
                try:
                    while fake.sync_count == synced_before:
                        if process.returncode is not None or time.perf_counter() - start > 30:
                            raise RuntimeError("the bot did not start")
                        await asyncio.sleep(0.005)
                    times.append(time.perf_counter() - start)
                finally:
                    process.terminate()
                    await asyncio.wait_for(process.wait(), 40)
    return {"median_s": statistics.median(times), "max_s": max(times)}


async def main() -> None:
    def show(name: str, figures: dict[str, float]) -> None:
        print(f"{name}: " + ", ".join(f"{k} {v:,.2f}" for k, v in figures.items()), flush=True)

    running = int(sys.argv[1]) if len(sys.argv) > 1 else 32
    show("memory, 500 jobs of 1024×1024 in flight", await memory(running=running))
    if len(sys.argv) > 1:
        return
    show("overhead, one at a time (provider 500 ms + store 50 ms)", await overhead())
    show("start-up, process start to commands synced", await startup())


if __name__ == "__main__":
    asyncio.run(main())
