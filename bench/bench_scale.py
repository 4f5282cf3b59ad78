"""Scale-out on one PostgreSQL ledger: API throughput with 1 and 2 `python -m bot serve`
processes, and the acknowledgement p99 of a 500 `/imagine` burst with both shards in one
process vs one shard per process; each figure with the CPU every process used meanwhile.

Run: .venv/bin/python bench/bench_scale.py [rounds]   (about 2 min a round; loopback only;
needs PostgreSQL's server binaries, found as the tests find them)

Everything is a process of its own: a throwaway PostgreSQL (durable: fsync and synchronous
commit on), the fake Cloudflare (provider latency 0; its account limit off), the fake Discord
(bench/fake_services.py, guilds spread over 2 shards), the bot processes, and the HTTP load
generator (httpx, API keys, requests round-robin over the serve processes: the load balancer).
Each measured phase gets a fresh database and fresh bot processes, and is audited afterwards
(counters equal the sum of the charges, nothing left open). CPU is utime+stime (+ reaped
children) from /proc for each process tree over the measured phase; ``our_share`` is their sum
over all the cores' time, ``others_s`` what the rest of the machine used meanwhile (/proc/stat's
busy time minus ours), ``iowait_s`` and ``machine_idle_s`` the cores' time waiting for the disk
and idle. One JSON summary at the end.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench_load import LAUNCHER  # noqa: E402
from bench_postgres import audit, start_durable_server  # noqa: E402
from bench_process import Service  # noqa: E402
from common import GENEROUS, SDXL, pct  # noqa: E402

from bot.api_keys import ApiKeys  # noqa: E402
from bot.http_backend import ShardedTransport  # noqa: E402
from bot.ledger import Ledger  # noqa: E402
from tests.postgres_server import PostgresServer  # noqa: E402

# Each phase stays under the bot's own per-process Cloudflare limiters (ai/run 720 a minute,
# Cloudflare's own limit), so what is measured is the processes, not the limiter.
API_WARMUP, API_REQUESTS, API_CONCURRENCY, API_USERS = 40, 600, 128, 50
BURST, BURST_WARMUP = 500, 20
CLOCK = os.sysconf("SC_CLK_TCK")


# -- CPU from /proc ------------------------------------------------------------------------------


def _processes() -> dict[int, tuple[int, float]]:
    """Every process: pid → (parent pid, CPU seconds incl. reaped children)."""
    seen: dict[int, tuple[int, float]] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            fields = Path(f"/proc/{entry.name}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue  # ended meanwhile
        seen[int(entry.name)] = (int(fields[1]), sum(int(f) for f in fields[11:15]) / CLOCK)
    return seen


def _machine() -> tuple[float, float]:
    """CPU seconds the whole machine spent busy (all cores, every user) and in iowait."""
    values = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    return (sum(values[:8]) - values[3] - values[4]) / CLOCK, values[4] / CLOCK


def cpu_by_role(roots: dict[str, int]) -> dict[str, float]:
    """CPU seconds so far of each role: its root process and every descendant not itself
    under another root."""
    processes = _processes()
    role_of = {pid: role for role, pid in roots.items()}
    totals = dict.fromkeys(roots, 0.0)
    for pid, (_, cpu) in processes.items():
        walk, hops = pid, 0
        while walk not in role_of and walk in processes and hops < 64:
            walk, hops = processes[walk][0], hops + 1
        if walk in role_of:
            totals[role_of[walk]] += cpu
    return totals


class CpuMeter:
    """CPU of each role and of the machine between ``start()`` and ``stop()``."""

    def __init__(self, roots: dict[str, int]) -> None:
        self.roots = {"bench": os.getpid(), **roots}

    def start(self) -> None:
        self.before, self.machine, self.wall = cpu_by_role(self.roots), _machine(), time.time()

    def stop(self) -> dict[str, Any]:
        after = cpu_by_role(self.roots)
        per = {role: round(after[role] - self.before[role], 2) for role in self.roots}
        ours, wall = sum(per.values()), time.time() - self.wall
        busy, iowait = (b - a for a, b in zip(self.machine, _machine(), strict=True))
        cores = os.cpu_count() or 1
        return {"cpu_s": per, "ours_s": round(ours, 2), "others_s": round(busy - ours, 2),
                "our_share": round(ours / (cores * wall), 2),
                "iowait_s": round(iowait, 2), "wall_s": round(wall, 2),
                "machine_idle_s": round(cores * wall - busy - iowait, 2),
                "loadavg": Path("/proc/loadavg").read_text().split()[:3]}  # fmt: skip


# -- processes -----------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def bot_env(folder: str, url: str, cf: dict[str, Any], **more: str) -> dict[str, str]:
    return {"PATH": os.environ.get("PATH", ""), "HOME": folder, "PYTHONPATH": str(ROOT),
            **GENEROUS, "DATA_DIR": folder, "DATABASE_URL": url,
            "IMAGE_PROVIDER": "cloudflare", "IMAGE_STORE": "cloudflare",
            "CLOUDFLARE_ACCOUNT_ID": cf["account_id"], "CLOUDFLARE_API_TOKEN": cf["token"],
            "CLOUDFLARE_IMAGE_ACCOUNT_HASH": cf["account_hash"],
            "CLOUDFLARE_API_BASE_URL": cf["api_base"],
            "CLOUDFLARE_IMAGE_DELIVERY_URL": cf["delivery_base"],
            "CLOUDFLARE_ACCOUNT_REQUESTS_PER_5MIN": "100000", "API_RATE_PER_MINUTE": "100000",
            "ALLOW_PRIVATE_URLS": "true", "LOG_LEVEL": "WARNING", **more}  # fmt: skip


async def spawn(args: list[str], env: dict[str, str], folder: str, log: Path) -> Any:
    with log.open("ab") as stderr:
        return await asyncio.create_subprocess_exec(
            sys.executable, *args, cwd=folder, env=env,
            stdout=asyncio.subprocess.DEVNULL, stderr=stderr,
        )  # fmt: skip


async def stop_all(processes: list[Any], log: Path) -> None:
    for process in processes:
        if process.returncode is None:
            process.send_signal(signal.SIGTERM)  # drains running jobs, then exits
    for process in processes:
        if await asyncio.wait_for(process.wait(), 120) not in (0, -signal.SIGTERM):
            sys.stderr.write(tail(log))


async def wait_healthy(port: int, process: Any, log: Path) -> None:
    async with httpx.AsyncClient() as client:
        for _ in range(1200):
            try:
                if (await client.get(f"http://127.0.0.1:{port}/healthz")).is_success:
                    return
            except httpx.TransportError:
                pass
            if process.returncode is not None:
                break
            await asyncio.sleep(0.05)
    raise RuntimeError(f"a serve process did not start: {tail(log)}")


def tail(log: Path) -> str:
    """The end of the processes' log, for a failure message."""
    return log.read_text(errors="replace")[-3000:]


def postmaster_pid(server: PostgresServer) -> int:
    return int((server.data / "postmaster.pid").read_text().split()[0])


def phase_meter(
    bots: str,
    processes: list[Any],
    load: tuple[str, int],
    cloudflare: Service,
    server: PostgresServer,
) -> CpuMeter:
    """The CPU meter of a phase: each bot process, the load, the fake Cloudflare, PostgreSQL."""
    roots = {f"{bots} {n}": process.pid for n, process in enumerate(processes)}
    return CpuMeter({**roots, load[0]: load[1], "fake cloudflare": cloudflare.process.pid,
                     "postgresql": postmaster_pid(server)})  # fmt: skip


# -- 1. API throughput ---------------------------------------------------------------------------


async def api_phase(server: PostgresServer, cloudflare: Service, cf: dict[str, Any],
                    serves: int) -> dict[str, Any]:  # fmt: skip
    """``serves`` serve processes on a fresh database, a load generator process round-robin
    over them: a warm-up, then API_REQUESTS generations measured."""
    name = server.create_database()
    url = server.url(name)
    ledger = await Ledger.open(url)
    keys = [(await ApiKeys(ledger).create(user_id=str(5000 + n)))[1] for n in range(API_USERS)]
    await ledger.close()
    with tempfile.TemporaryDirectory() as folder:
        log = Path(folder) / "serve.log"
        ports = [free_port() for _ in range(serves)]
        processes = [await spawn(["-m", "bot", "serve"],
                                 bot_env(folder, url, cf, WEB_PORT=str(port)), folder, log)
                     for port in ports]  # fmt: skip
        try:
            for port, process in zip(ports, processes, strict=True):
                await wait_healthy(port, process, log)
            load, _ = await Service.start("--load", script=Path(__file__))
            spec = {"urls": [f"http://127.0.0.1:{p}" for p in ports], "keys": keys}
            await load.ask(op="run", count=API_WARMUP, **spec)
            await cloudflare.ask(op="reset")
            load_role = ("load generator", load.process.pid)
            meter = phase_meter("serve", processes, load_role, cloudflare, server)
            meter.start()
            result = await load.ask(op="run", count=API_REQUESTS, **spec)
            cpu = meter.stop()
            cf_counts = await cloudflare.ask(op="counts")
            await load.stop()
        finally:
            await stop_all(processes, log)
    books = await audit(url)
    server.drop_database(name)
    assert books == {"counter_mismatches": 0, "open_jobs": 0}, books
    ok = result["statuses"].get("201", 0)
    return {"serve_processes": serves, "generations_per_s": round(ok / result["seconds"], 1),
            "statuses": result["statuses"], "p50_ms": result["p50_ms"],
            "p99_ms": result["p99_ms"], "cloudflare_per_generation":
            round(cf_counts["total"] / max(ok, 1), 2), **cpu,
            "cpu_ms_per_generation": round(cpu["ours_s"] * 1000 / max(ok, 1), 1)}  # fmt: skip


async def load_generator() -> None:
    """The load generator process: one JSON command a line, each run's figures a line.

    It sends through the bot's own transport (``ShardedTransport``): with httpx's default pool
    of 128 connections over two origins, the generator's pool scans cost more CPU than the
    serve processes it measured (6.1 s against 4.1 s for the 2-process run), and it, not the
    servers, set the rate."""
    limits = httpx.Limits(max_connections=API_CONCURRENCY,
                          max_keepalive_connections=API_CONCURRENCY)  # fmt: skip
    client = httpx.AsyncClient(timeout=300, transport=ShardedTransport(limits=limits, shards=16))
    print(json.dumps({"ready": True}), flush=True)
    async with client:
        while line := await asyncio.to_thread(sys.stdin.readline):
            print(json.dumps(await run_load(client, json.loads(line))), flush=True)


async def run_load(client: httpx.AsyncClient, command: dict[str, Any]) -> dict[str, Any]:
    """``count`` generations from API_CONCURRENCY workers, request n to ``urls[n % len]``."""
    urls, keys = command["urls"], command["keys"]
    statuses: Counter[str] = Counter()
    latencies: list[float] = []
    todo = iter(range(command["count"]))
    tag = time.time()

    async def worker() -> None:
        for n in todo:
            body = {"prompt": f"scale {tag} {n}", "model": SDXL, "width": 256, "height": 256}
            started = time.perf_counter()
            try:
                response = await client.post(
                    urls[n % len(urls)] + "/api/generate", json=body,
                    headers={"Authorization": f"Bearer {keys[n % len(keys)]}"},
                )  # fmt: skip
                statuses[str(response.status_code)] += 1
            except httpx.TransportError:
                statuses["transport error"] += 1
            latencies.append((time.perf_counter() - started) * 1000)

    start = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(API_CONCURRENCY)))
    return {"seconds": time.perf_counter() - start, "statuses": dict(statuses),
            "p50_ms": round(pct(latencies, 0.5), 1),
            "p99_ms": round(pct(latencies, 0.99), 1)}  # fmt: skip


# -- 2. Ack p99 over shard processes -------------------------------------------------------------


async def shard_phase(server: PostgresServer, cloudflare: Service, cf: dict[str, Any],
                      split: bool) -> dict[str, Any]:  # fmt: skip
    """SHARD_COUNT=2: one process running shards 0,1, or (``split``) one process per shard;
    a warm-up burst, then a burst of BURST /imagine from the sharded fake Discord."""
    name = server.create_database()
    url = server.url(name)
    discord, info = await Service.start("discord", "2")
    with tempfile.TemporaryDirectory() as folder:
        log = Path(folder) / "shards.log"
        env = bot_env(folder, url, cf, DISCORD_TOKEN=info["token"], WEB_PORT="0",
                      SHARD_COUNT="2")  # fmt: skip
        ids = ["0", "1"] if split else ["0,1"]
        processes = [await spawn(["-c", LAUNCHER, info["base_url"]], {**env, "SHARD_IDS": i},
                                 folder, log) for i in ids]  # fmt: skip
        try:
            for _ in range(6000):
                if (await discord.ask(op="ready"))["ready"]:
                    break
                if any(p.returncode is not None for p in processes):
                    raise RuntimeError(f"a shard process ended: {tail(log)}")
                await asyncio.sleep(0.01)
            else:
                raise RuntimeError("the shards did not connect")
            await discord.ask(op="burst", count=BURST_WARMUP)
            await cloudflare.ask(op="reset")
            load_role = ("fake discord", discord.process.pid)
            meter = phase_meter("shard process", processes, load_role, cloudflare, server)
            meter.start()
            burst = await discord.ask(op="burst", count=BURST)
            cpu = meter.stop()
        finally:
            await stop_all(processes, log)
            await discord.stop()
    books = await audit(url)
    server.drop_database(name)
    assert books == {"counter_mismatches": 0, "open_jobs": 0}, books
    return {"processes": len(processes), "shard_ids": ids,
            "ack_p99_ms": round(burst["ack_p99_ms"], 1),
            "completed_per_s": round(BURST / burst["seconds"], 1),
            "discord_429": burst["status_429"], **cpu,
            "cpu_ms_per_job": round(cpu["ours_s"] * 1000 / BURST, 1)}  # fmt: skip


# -- the run -------------------------------------------------------------------------------------


async def main() -> None:
    rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 1
    server = start_durable_server()
    if server is None:
        return
    cloudflare, cf = await Service.start("cloudflare")
    summary: dict[str, Any] = {"cores": os.cpu_count(), "rounds": []}
    try:
        for _ in range(rounds):
            one = await api_phase(server, cloudflare, cf, 1)
            two = await api_phase(server, cloudflare, cf, 2)
            ratio = two["generations_per_s"] / one["generations_per_s"]
            print(
                f"API: 1 serve {one['generations_per_s']}/s, 2 serve "
                f"{two['generations_per_s']}/s, ratio {ratio:.2f} (target ≥ 1.7)",
                flush=True,
            )
            joint = await shard_phase(server, cloudflare, cf, split=False)
            split = await shard_phase(server, cloudflare, cf, split=True)
            print(
                f"ack p99 of {BURST}: shards 0,1 in 1 process {joint['ack_p99_ms']} ms, "
                f"1 shard per process {split['ack_p99_ms']} ms",
                flush=True,
            )
            summary["rounds"].append({
                "api": {"one": one, "two": two, "ratio": round(ratio, 2)},
                "ack": {"one_process": joint, "two_processes": split,
                        "ratio": round(split["ack_p99_ms"] / joint["ack_p99_ms"], 2)},
            })  # fmt: skip
    finally:
        await cloudflare.stop()
        server.stop()
    print(json.dumps(summary, indent=1))


if __name__ == "__main__":
    asyncio.run(load_generator() if sys.argv[1:2] == ["--load"] else main())
