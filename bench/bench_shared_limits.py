"""The shared limits' cost: API rate-limit checks per second (one upsert each) and Cloudflare
grants per second (one INSERT … SELECT each, 16 calls' worth), on SQLite and PostgreSQL, one
process, 64 at a time.

Run: .venv/bin/python bench/bench_shared_limits.py   (the PostgreSQL figures need its server
binaries, found as the tests find them; a throwaway durable server in a temporary folder)
"""

from __future__ import annotations

import asyncio
import tempfile
import time
from pathlib import Path

import common  # noqa: F401  (puts the repository on sys.path)
from bench_postgres import start_durable_server

from bot.api_rate import ApiRateLimit
from bot.ledger import Ledger
from tests.postgres_server import run_async

CHECKS = 6_000
GRANTS = 2_000
CONCURRENCY = 64


async def rates(location: Path | str) -> tuple[float, float]:
    ledger = await Ledger.open(location)
    try:
        rate = ApiRateLimit(ledger.limits, per_minute=10**9)
        checks = iter(range(CHECKS))

        async def check() -> None:
            for n in checks:
                assert await rate.wait_for(f"key-{n % 50}") is None

        start = time.perf_counter()
        await asyncio.gather(*(check() for _ in range(CONCURRENCY)))
        per_check = CHECKS / (time.perf_counter() - start)
        grants = iter(range(GRANTS))

        async def grant() -> None:
            for _ in grants:
                assert await ledger.limits.grant(16, 10**9, 390_000) == 16

        start = time.perf_counter()
        await asyncio.gather(*(grant() for _ in range(CONCURRENCY)))
        return per_check, GRANTS / (time.perf_counter() - start)
    finally:
        await ledger.close()


def main() -> None:
    with tempfile.TemporaryDirectory() as folder:
        checks, grants = run_async(rates(Path(folder) / "bench.sqlite3"))
        print(f"sqlite: {checks:,.0f} API rate checks/s, {grants:,.0f} account grants/s")
    server = start_durable_server()
    if server is None:
        return
    try:
        checks, grants = run_async(rates(server.url(server.create_database())))
        print(f"postgresql: {checks:,.0f} API rate checks/s, {grants:,.0f} account grants/s")
    finally:
        server.stop()


if __name__ == "__main__":
    main()
