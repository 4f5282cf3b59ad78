"""Foundation benchmarks: local renderer, cache hits, ledger throughput, pipeline overhead.

Run: ./dev bench   (or .venv/bin/python bench/bench_foundation.py)
Figures are medians / p99 over repeated runs on this machine; no network is used.
"""

from __future__ import annotations

import asyncio
import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

from common import EXTERNAL, SleepyProvider, SlowStore, pct

from bot import imaging
from bot.catalog import Cost
from bot.config import load_settings
from bot.ledger import Ledger, Limits
from bot.ledger.ledger import NewJob
from bot.requests import GenerateRequest
from bot.runtime import open_runtime
from bot.stores.local import LocalImageStore

WIDE = 10**15


def bench_renderer(runs: int = 30) -> dict[str, float]:
    times = []
    for i in range(runs):
        start = time.perf_counter()
        imaging.render_preview(f"a lighthouse {i}", seed=i, width=1024, height=1024)
        times.append((time.perf_counter() - start) * 1000)
    return {"median_ms": statistics.median(times), "p99_ms": pct(times, 0.99)}


async def bench_ledger(pairs: int = 10_000, concurrency: int = 64) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as folder:
        ledger = await Ledger.open(Path(folder) / "bench.sqlite3")
        limits = Limits(WIDE, WIDE, WIDE, WIDE)
        cost = Cost(634, 57_600)
        remaining = iter(range(pairs))

        async def worker(n: int) -> None:
            for i in remaining:
                job = await ledger.reserve(
                    NewJob("generate", f"u{i % 50}", f"g{i % 5}", cost, 1, "m"), limits
                )
                await ledger.settle(job.id, 1, cost)

        start = time.perf_counter()
        await asyncio.gather(*(worker(n) for n in range(concurrency)))
        elapsed = time.perf_counter() - start
        audit = await ledger.audit()
        await ledger.close()
    assert audit == {"counter_mismatches": 0, "open_jobs": 0}, audit
    return {"pairs_per_second": pairs / elapsed}


async def bench_cache_hits(hits: int = 500) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as folder:
        # Each hit still pays the prompt check (on by default), so the budget is wide too.
        settings = load_settings({"DATA_DIR": folder, "QUOTA_USER_DAILY_IMAGES": "1000000",
                                  "QUOTA_USER_DAILY_USD": "1000"})  # fmt: skip
        async with open_runtime(settings) as runtime:
            request = GenerateRequest(prompt="a cached lighthouse", user_id="u1", guild_id="g1")
            await runtime.service.generate(request)
            times = []
            for _ in range(hits):
                start = time.perf_counter()
                result = await runtime.service.generate(request)
                times.append((time.perf_counter() - start) * 1000)
                assert result.cached
    return {"median_ms": statistics.median(times), "p99_ms": pct(times, 0.99)}


async def bench_overhead(
    in_flight: int = 100, seconds: float = 6.0, provider_s: float = 0.5, store_s: float = 0.05
) -> dict[str, float]:
    """End-to-end time minus the time spent inside the provider and store calls, with 100
    requests always in flight (closed loop, starts staggered over one request's latency)."""
    image = imaging.render_preview("x", seed=1, width=256, height=256)
    overheads: list[float] = []
    with tempfile.TemporaryDirectory() as folder:
        settings = load_settings({
            "DATA_DIR": folder, "QUOTA_USER_DAILY_IMAGES": "1000000",
            "QUOTA_USER_DAILY_USD": "1000", "QUOTA_GUILD_DAILY_USD": "100000",
            "QUOTA_DAILY_NEURONS": "1000000000", "MAX_CONCURRENT_JOBS": str(in_flight),
            "MAX_QUEUE": "10000", "CACHE_SCOPE": "off",
        })  # fmt: skip
        async with open_runtime(settings) as runtime:
            service = runtime.service
            service.provider = SleepyProvider(provider_s, image)
            assert isinstance(runtime.store, LocalImageStore)
            service.store = SlowStore(runtime.store, store_s)
            deadline = time.perf_counter() + seconds
            counter = iter(range(10**9))

            async def worker(n: int) -> None:
                await asyncio.sleep((provider_s + store_s) * n / in_flight)
                while time.perf_counter() < deadline:
                    external: list[float] = []
                    EXTERNAL.set(external)
                    start = time.perf_counter()
                    await service.generate(
                        GenerateRequest(prompt=f"overhead {next(counter)}", user_id=f"u{n}",
                                        guild_id="g1")
                    )  # fmt: skip
                    overheads.append((time.perf_counter() - start - sum(external)) * 1000)

            await asyncio.gather(*(worker(n) for n in range(in_flight)))
    return {
        "median_ms": statistics.median(overheads),
        "p99_ms": pct(overheads, 0.99),
        "requests": len(overheads),
    }


async def timed(name: str, run: Callable[[], Awaitable[dict[str, float]]]) -> dict[str, float]:
    result = await run()
    print(f"{name}: " + ", ".join(f"{k} {v:,.1f}" for k, v in result.items()), flush=True)
    return result


async def main() -> dict[str, dict[str, float]]:
    results = {"renderer_1024": bench_renderer()}
    print("local renderer 1024×1024: " + ", ".join(
        f"{k} {v:,.1f}" for k, v in results["renderer_1024"].items()), flush=True)  # fmt: skip
    results["ledger"] = await timed("ledger reserve+settle (file db, 64 concurrent)", bench_ledger)
    results["cache_hit"] = await timed("cache hit through the service", bench_cache_hits)
    results["overhead"] = await timed(
        "pipeline overhead, 100 in flight (provider 500 ms + store 50 ms)", bench_overhead
    )
    return results


if __name__ == "__main__":
    asyncio.run(main())
