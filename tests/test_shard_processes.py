"""Two shard processes for real: ``python -m bot`` twice (SHARD_COUNT=2, SHARD_IDS=0 and 1) on
one SQLite ledger (WAL across processes), against the sharded fake Discord in this process. Each
gets only its own server's interactions, only shard 0's syncs, and when shard 1's process is
replaced by a new one its message's buttons work there."""

from __future__ import annotations

import asyncio
import os
import signal
import sqlite3
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from bot.ledger import Ledger
from tests.fakes.discord import FAKE_TOKEN, FakeDiscord

ROOT = Path(__file__).resolve().parents[1]
SMALL = {"model": "@cf/stabilityai/stable-diffusion-xl-base-1.0", "width": 256, "height": 256}
# `python -m bot` with discord.py pointed at the fake (its REST base and gateway are globals).
LAUNCH = (
    "import sys, discord, yarl; from bot.cli import main; base = sys.argv.pop(1); "
    "discord.http.Route.BASE = base + '/api/v10'; "
    "discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY = yarl.URL("
    "base.replace('http', 'ws', 1) + '/gateway'); raise SystemExit(main())"
)


def has_result(message: Any) -> bool:
    footer = message.embeds[0].get("footer", {}) if message.embeds else {}
    return str(footer.get("text", "")).startswith("img_")


def tail(log: Path) -> str:
    """The end of the processes' log, for a failure message."""
    return log.read_text(errors="replace")[-2000:]


@asynccontextmanager
async def shard_process(
    fake: FakeDiscord, data: Path, shard: int, log: Path
) -> AsyncIterator[asyncio.subprocess.Process]:
    """``python -m bot`` running shard ``shard`` of 2; yields once its shard is connected."""
    env = {
        "PATH": os.environ.get("PATH", os.defpath), "HOME": str(data), "PYTHONPATH": str(ROOT),
        "DATA_DIR": str(data), "WEB_PORT": "0", "DISCORD_TOKEN": FAKE_TOKEN,
        "SHARD_COUNT": "2", "SHARD_IDS": str(shard),
    }  # fmt: skip
    with log.open("ab") as stderr:
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-c", LAUNCH, fake.base_url, cwd=data, env=env,
            stdout=asyncio.subprocess.DEVNULL, stderr=stderr,
        )  # fmt: skip
    try:
        for _ in range(3000):
            if fake.sessions(shard) and len(fake.sessions(shard)[0].dispatched) > 1:
                break
            assert process.returncode is None, tail(log)
            await asyncio.sleep(0.01)
        else:
            raise TimeoutError(f"shard {shard} did not connect: {tail(log)}")
        yield process
    finally:
        if process.returncode is None:
            process.send_signal(signal.SIGTERM)  # drains running jobs, then exits
        assert await asyncio.wait_for(process.wait(), 60) == 0, tail(log)


async def test_two_shard_processes_on_one_ledger(tmp_path: Path) -> None:
    data, log = tmp_path / "data", tmp_path / "bots.log"
    data.mkdir()
    async with FakeDiscord() as fake:
        zero = fake.add_guild("Shard Zero", shard=(0, 2))
        one = fake.add_guild("Shard One", shard=(1, 2))
        async with shard_process(fake, data, 1, log):
            await asyncio.sleep(0.5)  # ample time to sync, were it allowed to
            assert fake.sync_count == 0
            async with shard_process(fake, data, 0, log):
                await fake.wait_until(lambda: fake.sync_count == 1, 30)
                made_0 = await fake.slash("imagine", {"prompt": "a mill", **SMALL}, guild=zero)
                made_1 = await fake.slash("imagine", {"prompt": "a kiln", **SMALL}, guild=one)
                await made_0.wait_for_message(has_result, 30)
                message = await made_1.wait_for_message(has_result, 30)
                assert (made_0.shard, made_1.shard) == (0, 1)
                image_id = message.embeds[0]["footer"]["text"]
            # shard 1's process is replaced by a new one: the old message's buttons work there
        async with shard_process(fake, data, 1, log):
            details = await fake.click(message, f"img:info:{image_id}")
            info = await details.wait_for_message(lambda m: bool(m.embeds), 30)
            assert details.shard == 1 and image_id in str(info.embeds[0])
        assert fake.sync_count == 1 and not fake.errors
    ledger = await Ledger.open(data / "bot.sqlite3")
    try:
        assert (await ledger.usage("all", "")).images == 2
        assert await ledger.open_jobs() == []
    finally:
        await ledger.close()
    with sqlite3.connect(data / "bot.sqlite3") as db:  # each SIGTERM gave its lease up at once
        assert db.execute("SELECT count(*) FROM instances").fetchone()[0] == 0
