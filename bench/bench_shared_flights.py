"""Single-flight across processes: two runtimes (own instance ids) over one ledger, on a SQLite
file and on a throwaway PostgreSQL server.

- hand-off: the leader's provider takes 300 ms; the follower (same request, other runtime)
  is done this long after the leader (SQLite: its poll; PostgreSQL: NOTIFY), 30 prompts;
- cost: distinct requests per second through ``service.generate`` (provider 0 ms, 32 in
  flight, one runtime), with the shared claim and release, and with them switched off.

Run: .venv/bin/python bench/bench_shared_flights.py
"""

from __future__ import annotations

import asyncio
import io
import statistics
import tempfile
import time
from pathlib import Path

import common
from bench_postgres import start_durable_server
from PIL import Image

from bot.config import load_settings
from bot.generation.shared_flights import Taken
from bot.requests import GenerateRequest
from bot.runtime import Runtime, open_runtime

PROMPTS = 30
REQUESTS, IN_FLIGHT = 400, 32


def tiny_png() -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (8, 8), "teal").save(out, format="PNG")
    return out.getvalue()


async def hand_off(a: Runtime, b: Runtime) -> list[float]:
    a.service.provider = b.service.provider = common.SleepyProvider(0.3, tiny_png(), copy=True)
    gaps = []
    for n in range(PROMPTS):
        ask = GenerateRequest(prompt=f"hand-off {n}", user_id="u1", guild_id="g", model=common.SDXL)

        async def timed(runtime: Runtime, request: GenerateRequest) -> tuple[float, bool]:
            result = await runtime.service.generate(request)
            return time.perf_counter(), result.cached

        (t1, c1), (t2, c2) = await asyncio.gather(timed(a, ask), timed(b, ask))
        assert c1 != c2, "one of the two must have been served from the other"
        gaps.append(abs(t2 - t1) * 1000)
    return gaps


async def throughput(runtime: Runtime, label: str) -> float:
    runtime.service.provider = common.SleepyProvider(0.0, tiny_png(), copy=True)
    queue = iter(range(REQUESTS))

    async def worker() -> None:
        for n in queue:
            await runtime.service.generate(GenerateRequest(
                prompt=f"{label} distinct {n}", user_id=f"u{n % 50}", guild_id="g",
                model=common.SDXL, width=256, height=256,
            ))  # fmt: skip

    start = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(IN_FLIGHT)))
    return REQUESTS / (time.perf_counter() - start)


async def run(label: str, env: dict[str, str]) -> None:
    settings = load_settings({**common.GENEROUS, "CACHE_SCOPE": "guild", "WEB_PORT": "0",
                              "MODERATION_MODEL": "off", **env})  # fmt: skip
    async with open_runtime(settings) as a, open_runtime(settings) as b:
        gaps = await hand_off(a, b)
        print(f"{label}: follower done after the leader: median {statistics.median(gaps):.1f} ms, "
              f"max {max(gaps):.1f} ms ({PROMPTS} prompts)")  # fmt: skip
        shared = a.service.generation.shared
        take = shared.take

        async def in_process_only(plan, own, *, fresh):  # type: ignore[no-untyped-def]
            return Taken(generate=own)

        for round_ in range(2):  # alternating, so neither always runs on a warmer ledger
            shared.take = take  # type: ignore[method-assign]
            with_claims = await throughput(a, f"on{round_}")
            shared.take = in_process_only  # type: ignore[method-assign]
            without = await throughput(a, f"off{round_}")
            print(f"{label}: distinct requests/s, shared claim+release {with_claims:,.0f}, "
                  f"in-process only {without:,.0f}")  # fmt: skip
        shared.take = take  # type: ignore[method-assign]


def main() -> None:
    with tempfile.TemporaryDirectory() as folder:
        asyncio.run(run("sqlite", {"DATA_DIR": str(Path(folder) / "data")}))
    server = start_durable_server()
    if server is None:
        return
    try:
        with tempfile.TemporaryDirectory() as folder:
            url = server.url(server.create_database())
            asyncio.run(run("postgresql", {"DATA_DIR": str(Path(folder) / "data"),
                                           "DATABASE_URL": url}))  # fmt: skip
    finally:
        server.stop()


if __name__ == "__main__":
    main()
