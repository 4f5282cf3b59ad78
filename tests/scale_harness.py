"""Helpers for tests/test_scale_out.py: real ``python -m bot`` shard processes and ``python -m
bot serve`` processes on one PostgreSQL ledger, the fake Discord and the fake Cloudflare in the
test process, and one request through either front with its outcome."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from tests.conftest import FAKE_CF_TOKEN
from tests.fakes.cloudflare import FakeCloudflare
from tests.fakes.discord import FAKE_TOKEN, FakeDiscord, FakeGuild, FakeUser
from tests.test_fault_campaign import final_messages, visible
from tests.test_kill9 import free_port
from tests.test_shard_processes import LAUNCH, tail

ROOT = Path(__file__).resolve().parents[1]
SDXL_LIGHTNING = "@cf/bytedance/stable-diffusion-xl-lightning"
SMALL = {"model": SDXL_LIGHTNING, "width": 256, "height": 256}
PRICE_MICRO_USD = 2_000  # UNPUBLISHED_MODEL_PRICE_USD below: SDXL Lightning's price per image
USER_DAILY_IMAGES = 12
GUILD_DAILY_MICRO_USD = 250_000  # 125 images a server a day: binds before its users' quotas


def cluster_env(fake: FakeCloudflare, database_url: str, data: Path) -> dict[str, str]:
    """What every process of the cluster is given (each its own DATA_DIR and WEB_PORT)."""
    return {
        "PATH": os.environ.get("PATH", os.defpath), "HOME": str(data), "PYTHONPATH": str(ROOT),
        "DATA_DIR": str(data), "WEB_PORT": str(free_port()), "DATABASE_URL": database_url,
        "DISCORD_TOKEN": FAKE_TOKEN, "IMAGE_STORE": "cloudflare",
        "CLOUDFLARE_ACCOUNT_ID": fake.account_id, "CLOUDFLARE_API_TOKEN": FAKE_CF_TOKEN,
        "CLOUDFLARE_API_BASE_URL": fake.api_base,
        "CLOUDFLARE_IMAGE_ACCOUNT_HASH": fake.account_hash,
        "CLOUDFLARE_IMAGE_DELIVERY_URL": fake.delivery_base,
        "CLOUDFLARE_TIMEOUT_SECONDS": "3",  # a 'timeout' fault hangs 4 s
        "UNPUBLISHED_MODEL_PRICE_USD": "0.002",
        "QUOTA_USER_DAILY_IMAGES": str(USER_DAILY_IMAGES), "QUOTA_USER_DAILY_USD": "1.00",
        "QUOTA_GUILD_DAILY_USD": f"{GUILD_DAILY_MICRO_USD / 1_000_000:.2f}",
        "QUOTA_DAILY_NEURONS": "100000000", "MODERATION_MODEL": "off",
        "MAX_QUEUE": "5000", "MAX_CONCURRENT_JOBS": "16", "MAX_JOBS_PER_USER": "16",
        "API_RATE_PER_MINUTE": "10000", "DISCORD_CHANNEL_MESSAGES_PER_10S": "0",
        "CLOUDFLARE_ACCOUNT_REQUESTS_PER_5MIN": "5000",  # one budget shared by the four
        "JOB_LEASE_SECONDS": "2",  # a killed process's jobs are the others' after 2 s
    }  # fmt: skip


@dataclass
class Cluster:
    """The processes, by name (``shard0``, ``shard1``, ``serve0``, ``serve1``), and their logs."""

    discord: FakeDiscord
    cloudflare: FakeCloudflare
    database_url: str
    root: Path
    processes: dict[str, asyncio.subprocess.Process] = field(default_factory=dict)
    envs: dict[str, dict[str, str]] = field(default_factory=dict)
    logs: dict[str, Path] = field(default_factory=dict)
    starts: dict[str, int] = field(default_factory=dict)

    def _env(self, name: str) -> dict[str, str]:
        if name not in self.envs:
            data = self.root / name
            data.mkdir(parents=True, exist_ok=True)
            self.envs[name] = cluster_env(self.cloudflare, self.database_url, data)
        return self.envs[name]

    async def _spawn(self, name: str, *args: str) -> asyncio.subprocess.Process:
        env = self._env(name)
        self.starts[name] = self.starts.get(name, 0) + 1
        log = self.root / f"{name}.{self.starts[name]}.log"
        self.logs[name] = log
        with log.open("wb") as stderr:
            process = await asyncio.create_subprocess_exec(
                sys.executable, *args, cwd=env["DATA_DIR"], env=env,
                stdout=asyncio.subprocess.DEVNULL, stderr=stderr,
            )  # fmt: skip
        self.processes[name] = process
        return process

    async def start_shard(self, shard: int) -> None:
        """``python -m bot`` running shard ``shard`` of 2; returns once its shard is connected."""
        name = f"shard{shard}"
        self._env(name).update(SHARD_COUNT="2", SHARD_IDS=str(shard))
        process = await self._spawn(name, "-c", LAUNCH, self.discord.base_url)
        for _ in range(6000):
            sessions = self.discord.sessions(shard)
            if sessions and len(sessions[-1].dispatched) > 1:
                return
            assert process.returncode is None, tail(self.logs[name])
            await asyncio.sleep(0.01)
        raise TimeoutError(f"{name} did not connect: {tail(self.logs[name])}")

    async def start_serve(self, index: int) -> str:
        """``python -m bot serve``; its base URL once ``/healthz`` answers."""
        name = f"serve{index}"
        process = await self._spawn(name, "-m", "bot", "serve")
        base = self.base_url(name)
        async with httpx.AsyncClient() as client:
            for _ in range(1200):
                assert process.returncode is None, tail(self.logs[name])
                try:
                    if (await client.get(f"{base}/healthz")).is_success:
                        return base
                except httpx.TransportError:
                    pass
                await asyncio.sleep(0.05)
        raise TimeoutError(f"{name} did not start: {tail(self.logs[name])}")

    def base_url(self, name: str) -> str:
        return f"http://127.0.0.1:{self.envs[name]['WEB_PORT']}"

    def kill(self, name: str) -> None:
        self.processes[name].send_signal(signal.SIGKILL)

    async def stop_all(self) -> dict[str, int | None]:
        """SIGTERM to every live process (it drains, then exits); their exit codes."""
        for process in self.processes.values():
            if process.returncode is None:
                process.send_signal(signal.SIGTERM)
        codes: dict[str, int | None] = {}
        for name, process in self.processes.items():
            try:
                codes[name] = await asyncio.wait_for(process.wait(), 60)
            except TimeoutError:
                process.kill()
                codes[name] = None
        return codes

    def recovery_lines(self, *names: str) -> list[str]:
        """The 'crash recovery:' lines the named processes logged so far."""
        lines = []
        for name in names:
            text = self.logs[name].read_text(errors="replace")
            lines += [line for line in text.splitlines() if "crash recovery:" in line]
        return lines


@dataclass
class Outcome:
    """What one request ended in: ``image`` (with its ids), ``quota``, or ``error``."""

    front: str
    prompt: str
    kind: str
    image_ids: list[str] = field(default_factory=list)
    detail: str = ""
    interaction: Any = None


def is_quota(text: str) -> bool:
    """A refusal by a user's or a server's daily limit (``bot.refusals`` words them)."""
    lowered = text.casefold()
    return any(word in lowered for word in ("quota", "images for today", "daily budget"))


async def via_discord(fake: FakeDiscord, user: FakeUser, guild: FakeGuild, prompt: str) -> Outcome:
    """/imagine through the real client; its one final reply (a result or a private error)."""
    interaction = await fake.slash("imagine", {"prompt": prompt, **SMALL}, user=user, guild=guild)
    await interaction.wait_until(lambda: len(final_messages(interaction)) >= 1, 300)
    finals = final_messages(interaction)
    assert len(finals) == 1 == len(visible(interaction)), [m.content for m in visible(interaction)]
    [message] = finals
    if message.embeds:
        ids = [e["footer"]["text"] for e in message.embeds]
        return Outcome("discord", prompt, "image", ids, interaction=interaction)
    assert message.ephemeral and message.content and "Traceback" not in message.content
    kind = "quota" if is_quota(message.content) else "error"
    return Outcome("discord", prompt, kind, detail=message.content, interaction=interaction)


async def via_api(client: httpx.AsyncClient, base: str, key: str, prompt: str) -> Outcome:
    """POST /api/generate with the user's key; 201 with the image, 403 over quota, or else."""
    response = await client.post(
        f"{base}/api/generate", json={"prompt": prompt, **SMALL},
        headers={"Authorization": f"Bearer {key}"},
    )  # fmt: skip
    body = response.json()
    assert "Traceback" not in response.text
    if response.status_code == 201:
        return Outcome("api", prompt, "image", [body["id"]])
    kind = "quota" if response.status_code == 403 and is_quota(response.text) else "error"
    return Outcome("api", prompt, kind, detail=f"{response.status_code} {body.get('error')}")
