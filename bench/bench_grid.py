"""The grid of a 4-image result: time to compose it and the bytes it sends.

Run from the repository root: ``.venv/bin/python bench/bench_grid.py [runs]`` (default 30).
Three figures, each over ``runs`` compositions of four 1024×1024 sources after one warm-up:
``compose_grid`` on the local renderer's PNGs (what the embedded backend makes), on
photo-like PNGs (noise over a gradient: detail like a model's output, the worst case for
JPEG), and a whole grid as the Discord front asks for it (``service.grid`` after a real
4-image job on the local store: four file reads, the hop to a worker thread and back).
"""

from __future__ import annotations

import asyncio
import io
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from common import GENEROUS
from PIL import Image

from bot.config import load_settings
from bot.imaging import compose_grid, render_preview
from bot.requests import GenerateRequest
from bot.runtime import open_runtime

SIDE = 1024
DISCORD_FILE_BYTES = 10 * 1024 * 1024


def summary(label: str, timings: list[float], sizes: list[int]) -> dict[str, float]:
    timings = sorted(timings)
    p99 = timings[min(len(timings) - 1, round(0.99 * (len(timings) - 1)))]
    median = statistics.median(timings)
    size = statistics.median(sizes)
    print(
        f"{label:<46} median {median:7.1f} ms   p99 {p99:7.1f} ms   "
        f"grid {size / 1024:6.0f} KB (max {max(sizes) / 1024:.0f} KB)   (n={len(timings)})"
    )
    assert max(sizes) < DISCORD_FILE_BYTES
    return {"median_ms": median, "p99_ms": p99, "bytes": size}


def photo_like_png(seed: int) -> bytes:
    noise = Image.effect_noise((SIDE, SIDE), 40 + seed).convert("RGB")
    gradient = Image.linear_gradient("L").resize((SIDE, SIDE)).rotate(seed * 37).convert("RGB")
    buffer = io.BytesIO()
    Image.blend(noise, gradient, 0.5).save(buffer, "PNG", compress_level=1)
    return buffer.getvalue()


def bench_compose(label: str, sources: list[bytes], runs: int) -> dict[str, float]:
    compose_grid(sources)
    timings, sizes = [], []
    for _ in range(runs):
        start = time.perf_counter()
        grid = compose_grid(sources)
        timings.append((time.perf_counter() - start) * 1000)
        sizes.append(len(grid.data))
    return summary(label, timings, sizes)


async def bench_service_grid(runs: int) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as folder:
        settings = load_settings({"DATA_DIR": folder, **GENEROUS})
        async with open_runtime(settings) as runtime:
            result = await runtime.service.generate(
                GenerateRequest(prompt="four lighthouses at dusk", user_id="u1", count=4)
            )
            images = result.images
            assert len(images) == 4 and images[0].width == SIDE
            await runtime.service.grid(images, max_bytes=DISCORD_FILE_BYTES)
            timings, sizes = [], []
            for _ in range(runs):
                start = time.perf_counter()
                grid = await runtime.service.grid(images, max_bytes=DISCORD_FILE_BYTES)
                timings.append((time.perf_counter() - start) * 1000)
                sizes.append(len(grid.data))
    return summary("service.grid, 4-image job, local store", timings, sizes)


def main() -> None:
    runs = int(sys.argv[1]) if len(sys.argv) > 1 else 30
    prompt = "a red fox in a snowy forest at dawn, cinematic lighting"
    previews = [render_preview(prompt, seed=n, width=SIDE, height=SIDE) for n in range(4)]
    bench_compose("compose_grid, 4 local-renderer PNGs 1024²", previews, runs)
    photos = [photo_like_png(n) for n in range(4)]
    bench_compose("compose_grid, 4 photo-like PNGs 1024²", photos, runs)
    asyncio.run(bench_service_grid(runs))
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"peak RSS of this process: {peak:.0f} MB")


if __name__ == "__main__":
    main()
