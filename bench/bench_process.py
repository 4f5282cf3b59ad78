"""The bot as its own process (`python -m bot`) through the real discord.py client, against the
fake Discord and the fake Cloudflare each in a process of its own (bench/fake_services.py), as a
user's deployment is: Workers AI generates, Cloudflare Images stores, the SQLite ledger charges.

Run: .venv/bin/python bench/bench_process.py [rounds]   (about 30 s; loopback only)

For MAX_CONCURRENT_JOBS 8 and 200: a burst of 200 /imagine from 20 users spread over 19
channels of 10 guilds (provider latency 0), reporting completed jobs per second, the Discord
and Cloudflare requests per job by kind, the worst event-loop stall inside the bot
(LOOP_LAG_PROBE) and the bot's peak RSS (VmHWM). A warm-up burst of 20 comes first.
BENCH_BOT_LOG=/path appends the bot's log (stderr) there.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench_load import LAUNCHER  # noqa: E402
from common import GENEROUS  # noqa: E402

JOBS = 200


class Service:
    """A fake in its own process, one JSON line per command."""

    def __init__(self, process: asyncio.subprocess.Process) -> None:
        self.process = process

    @classmethod
    async def start(
        cls, which: str, *args: str, script: Path = ROOT / "bench" / "fake_services.py"
    ) -> tuple[Service, dict[str, Any]]:
        process = await asyncio.create_subprocess_exec(
            sys.executable, str(script), which, *args,
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, limit=2**24,
        )  # fmt: skip
        service = cls(process)
        return service, await service.read()

    async def read(self) -> dict[str, Any]:
        assert self.process.stdout is not None
        line = await asyncio.wait_for(self.process.stdout.readline(), 600)
        if not line:
            raise RuntimeError("a fake service ended")
        return dict(json.loads(line))

    async def ask(self, **command: Any) -> dict[str, Any]:
        assert self.process.stdin is not None
        self.process.stdin.write(json.dumps(command).encode() + b"\n")
        await self.process.stdin.drain()
        return await self.read()

    async def stop(self) -> None:
        self.process.terminate()
        await self.process.wait()


def peak_rss_mb(pid: int) -> float:
    status = Path(f"/proc/{pid}/status").read_text()
    match = re.search(r"VmHWM:\s+(\d+) kB", status)
    return int(match.group(1)) / 1024 if match else 0.0


async def probe_report(bot: asyncio.subprocess.Process, profile: str | None) -> None:
    """SIGUSR1: the bot's loop probe logs its worst stall so far and starts over."""
    if not profile:  # under py-spy the pid is py-spy's
        bot.send_signal(signal.SIGUSR1)
        await asyncio.sleep(0.2)


def cpu_seconds(pid: int) -> float:
    """User + system CPU the process has used so far (from /proc/PID/stat)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def append(path: Path, data: bytes) -> None:
    with path.open("ab") as file:
        file.write(data)


def per_job(requests: dict[str, int], jobs: int) -> dict[str, float]:
    return {kind: round(n / jobs, 2) for kind, n in sorted(requests.items())}


async def one_run(running: int) -> dict[str, Any]:
    discord_fake, discord_info = await Service.start("discord")
    cloudflare, cf = await Service.start("cloudflare")
    with tempfile.TemporaryDirectory() as folder:
        env = {"PATH": os.environ.get("PATH", ""), "HOME": folder, "PYTHONPATH": str(ROOT),
               **GENEROUS, "MAX_CONCURRENT_JOBS": str(running), "MAX_JOBS_PER_USER": "64",
               "DISCORD_TOKEN": discord_info["token"], "DATA_DIR": folder, "WEB_PORT": "0",
               "IMAGE_PROVIDER": "cloudflare", "IMAGE_STORE": "cloudflare",
               "CLOUDFLARE_ACCOUNT_ID": cf["account_id"], "CLOUDFLARE_API_TOKEN": cf["token"],
               "CLOUDFLARE_IMAGE_ACCOUNT_HASH": cf["account_hash"],
               "CLOUDFLARE_API_BASE_URL": cf["api_base"],
               "CLOUDFLARE_IMAGE_DELIVERY_URL": cf["delivery_base"],
               "ALLOW_PRIVATE_URLS": "true", "LOOP_LAG_PROBE": "1"}  # fmt: skip
        env["PYTHONPATH"] = os.environ.get("BENCH_BOT_ROOT", str(ROOT))  # another tree's bot
        profile = os.environ.get("BENCH_PYSPY")  # a path: py-spy records the bot (collapsed)
        spy = [str(Path(sys.executable).with_name("py-spy")), "record", "--format", "raw",
               "-r", "200", "-o", f"{profile}.{running}", "--"] if profile else []  # fmt: skip
        bot = await asyncio.create_subprocess_exec(
            *spy, sys.executable, "-c", LAUNCHER, discord_info["base_url"], cwd=folder, env=env,
            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        try:
            for _ in range(3000):
                if (await discord_fake.ask(op="ready"))["ready"]:
                    break
                if bot.returncode is not None:
                    raise RuntimeError("the bot did not start")
                await asyncio.sleep(0.01)
            await discord_fake.ask(op="burst", count=20)  # warm-up: connections, first imports
            await cloudflare.ask(op="reset")
            await probe_report(bot, profile)  # the probe starts over: start-up is not counted
            cpu_before = cpu_seconds(bot.pid)
            burst = await discord_fake.ask(op="burst", count=JOBS)
            cpu = cpu_seconds(bot.pid) - cpu_before
            await probe_report(bot, profile)  # the worst stall of the burst alone
            cf_counts = await cloudflare.ask(op="counts")
            rss = peak_rss_mb(bot.pid)
        finally:
            if bot.returncode is None:
                bot.send_signal(signal.SIGINT)
            _, errors = await asyncio.wait_for(bot.communicate(), 60)
            if bot.returncode:
                sys.stderr.write(errors.decode(errors="replace")[-3000:])
            if log_path := os.environ.get("BENCH_BOT_LOG"):  # the bot's whole log, appended
                append(Path(log_path), errors)
            await discord_fake.stop()
            await cloudflare.stop()
    reports = re.findall(
        rb"worst stall ([\d.]+) ms[^)]*?(?:generation ([\d/]+))?\)(?: in (.*))?$", errors, re.M
    )
    stall, collections, where = reports[1] if len(reports) > 1 else (b"nan", b"", b"")
    return {
        "jobs_per_s": JOBS / burst["seconds"],
        "ack_p99_ms": burst["ack_p99_ms"],
        "worst_stall_ms": float(stall),
        "peak_rss_mb": rss,
        "bot_cpu_ms_per_job": cpu * 1000 / JOBS,
        "discord_per_job": sum(burst["requests"].values()) / JOBS,
        "discord_429": burst["status_429"],
        "discord_new_connections": burst["connections"],
        "discord_kinds": per_job(burst["requests"], JOBS),
        "cloudflare_per_job": cf_counts["total"] / JOBS,
        "cloudflare_kinds": per_job(cf_counts["requests"], JOBS),
        "stall_in": where.decode(errors="replace"),
        "gc_collections_by_generation": collections.decode(),
    }


async def main() -> None:
    rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 1
    for _ in range(rounds):
        for running in (8, 200):
            figures = await one_run(running)
            kinds = {k: figures.pop(k) for k in ("discord_kinds", "cloudflare_kinds", "stall_in",
                                                 "gc_collections_by_generation")}  # fmt: skip
            print(f"200 /imagine, MAX_CONCURRENT_JOBS={running}: "
                  + ", ".join(f"{k} {v:,.1f}" for k, v in figures.items()), flush=True)  # fmt: skip
            print(f"  per job: {json.dumps(kinds)}", flush=True)


if __name__ == "__main__":
    asyncio.run(main())
