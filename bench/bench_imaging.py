"""Time the local preview renderer and upload validation.

Run from the repository root: ``.venv/bin/python bench/bench_imaging.py [runs]``.
"""

from __future__ import annotations

import io
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from PIL import Image

from bot.imaging import (
    parse_variant,
    render_preview,
    render_preview_from,
    render_variant,
    validate_upload,
)


def measure(label: str, runs: int, work: Callable[[int], object]) -> None:
    """Run ``work(i)`` ``runs`` times after one warm-up and print median, p99 and max in ms."""
    work(-1)
    timings: list[float] = []
    for index in range(runs):
        start = time.perf_counter()
        work(index)
        timings.append((time.perf_counter() - start) * 1000)
    timings.sort()
    p99 = timings[min(len(timings) - 1, round(0.99 * (len(timings) - 1)))]
    print(
        f"{label:<44} median {statistics.median(timings):7.2f} ms   "
        f"p99 {p99:7.2f} ms   max {timings[-1]:7.2f} ms   (n={runs})"
    )


def photo_like_png(size: int) -> bytes:
    """A 1024×1024 PNG with real detail (noise over a gradient), not a flat colour."""
    noise = Image.effect_noise((size, size), 40).convert("RGB")
    gradient = Image.linear_gradient("L").resize((size, size)).convert("RGB")
    buffer = io.BytesIO()
    Image.blend(noise, gradient, 0.5).save(buffer, "PNG")
    return buffer.getvalue()


def main() -> None:
    runs = int(sys.argv[1]) if len(sys.argv) > 1 else 30
    prompt = "a red fox in a snowy forest at dawn, cinematic lighting, highly detailed"

    measure(
        "render_preview 1024×1024",
        runs,
        lambda i: render_preview(prompt, seed=i, width=1024, height=1024),
    )
    png = photo_like_png(1024)
    print(f"(test PNG is {len(png) / 1024:.0f} KB)")
    measure("validate_upload 1024×1024 PNG", runs, lambda i: validate_upload(png))
    variant = parse_variant("w=512,h=512,fit=cover")
    measure("render_variant 1024→512 cover (PNG)", runs, lambda i: render_variant(png, variant))
    measure(
        "render_preview_from 1024×1024, strength 0.6",
        runs,
        lambda i: render_preview_from(png, prompt, seed=i, width=1024, height=1024, strength=0.6),
    )


if __name__ == "__main__":
    main()
