"""The PostgreSQL ledger: reserve+settle pairs per second with 1, 2 and 4 processes on one
server, and the same audit as bench_foundation's ledger figure (counters equal the sum of the
charges, nothing left open).

Run: .venv/bin/python bench/bench_postgres.py   (needs PostgreSQL's server binaries, found as
the tests find them; a throwaway server is started in a temporary folder, durable: fsync on)
"""

from __future__ import annotations

import asyncio
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import common  # noqa: F401  (puts the repository on sys.path)

from bot.catalog import Cost
from bot.ledger import Ledger, Limits
from bot.ledger.ledger import NewJob
from tests.postgres_server import PostgresServer, find_binaries, run_async

WIDE = 10**15
PAIRS_PER_PROCESS = 6_000
CONCURRENCY = 64  # reserve+settle loops in flight per process


async def one_process(url: str, me: int, pairs: int) -> None:
    """A worker process: connect, say ready, wait for "go", run the pairs, report seconds and
    its own CPU seconds over the run (process start and connecting left out)."""
    ledger = await Ledger.open(url)
    limits = Limits(WIDE, WIDE, WIDE, WIDE)
    cost = Cost(634, 57_600)
    remaining = iter(range(pairs))
    print("ready", flush=True)
    await asyncio.to_thread(sys.stdin.readline)

    async def worker() -> None:
        for i in remaining:
            new = NewJob("generate", f"u{me}-{i % 50}", f"g{i % 5}", cost, 1, "m")
            job = await ledger.reserve(new, limits)
            await ledger.settle(job.id, 1, cost)

    start, cpu = time.perf_counter(), time.process_time()
    await asyncio.gather(*(worker() for _ in range(CONCURRENCY)))
    report = {"seconds": time.perf_counter() - start, "cpu": time.process_time() - cpu}
    print(json.dumps(report), flush=True)
    await ledger.close()


def server_cpu_seconds(server: PostgresServer) -> float:
    """CPU time (user + system) of the server's processes so far, the connections that have
    ended included (the postmaster's reaped children; Linux /proc): a figure a busy shared
    machine changes much less than wall time."""
    postmaster = (server.data / "postmaster.pid").read_text().split()[0]
    ticks = 0
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            fields = (Path("/proc") / pid / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:  # a process that ended meanwhile
            continue
        if pid == postmaster:
            ticks += sum(int(f) for f in fields[11:15])  # its own and its ended children's
        elif fields[1] == postmaster:
            ticks += int(fields[11]) + int(fields[12])
    return ticks / os.sysconf("SC_CLK_TCK")


def client_cpu_seconds() -> float:
    """CPU time of the worker processes that have ended (they are waited for)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def measure(server: PostgresServer, processes: int) -> dict[str, float]:
    name = server.create_database()
    url = server.url(name)
    children = [
        subprocess.Popen(  # noqa: S603
            [sys.executable, __file__, "--worker", url, str(n)],
            text=True,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
        )
        for n in range(processes)
    ]
    for child in children:
        assert child.stdout is not None and child.stdout.readline().strip() == "ready"
    start, server_cpu = time.perf_counter(), server_cpu_seconds(server)
    client_cpu = client_cpu_seconds()
    for child in children:
        assert child.stdin is not None
        child.stdin.write("go\n")
        child.stdin.flush()
    run_cpu = 0.0
    for child in children:
        out, _ = child.communicate(timeout=600)
        assert child.returncode == 0
        run_cpu += json.loads(out.splitlines()[-1])["cpu"]
    elapsed = time.perf_counter() - start
    pairs = processes * PAIRS_PER_PROCESS
    server_us = 1e6 * (server_cpu_seconds(server) - server_cpu) / pairs
    client_us = 1e6 * (client_cpu_seconds() - client_cpu) / pairs  # with each process's start
    books = run_async(audit(url))
    server.drop_database(name)
    assert books == {"counter_mismatches": 0, "open_jobs": 0}, books
    return {
        "pairs_per_second": pairs / elapsed, "server_us": server_us, "client_us": client_us,
        "client_run_us": 1e6 * run_cpu / pairs,
    }  # fmt: skip


async def audit(url: str) -> dict[str, int]:
    """The ledger's audit: counter mismatches and open jobs (both 0 when the books hold)."""
    ledger = await Ledger.open(url)
    try:
        return await ledger.audit()
    finally:
        await ledger.close()


def start_durable_server() -> PostgresServer | None:
    """A throwaway server (fsync on) with the migrated template; None, said why, without the
    server binaries."""
    binaries = find_binaries()
    if binaries is None:
        print("no PostgreSQL server binaries (Debian: apt-get install postgresql)")
        return None
    server = PostgresServer(binaries, durable=True)
    server.start()
    try:
        server.create_template()
    except BaseException:
        server.stop()
        raise
    return server


def main() -> None:
    server = start_durable_server()
    if server is None:
        return
    try:
        for processes in (1, 2, 4):
            figures = measure(server, processes)
            print(f"postgres ledger, {processes} process(es): "
                  f"{figures['pairs_per_second']:,.0f} reserve+settle pairs/s (audit clean); "
                  f"CPU per pair: server {figures['server_us']:,.0f} us, "
                  f"clients {figures['client_us']:,.0f} us "
                  f"(over the run alone {figures['client_run_us']:,.0f} us)")  # fmt: skip
    finally:
        server.stop()


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--worker":
        asyncio.run(one_process(sys.argv[2], int(sys.argv[3]), PAIRS_PER_PROCESS))
    else:
        main()
