"""The collector after start-up (bot/heap.py): start-up's survivors frozen, thresholds raised,
and ``python -m bot`` does it once start-up is done, before the gateway connects."""

from __future__ import annotations

import asyncio
import gc
import os
import signal
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from bot.heap import THRESHOLDS, settle_heap
from tests.fakes.discord import FAKE_TOKEN, FakeDiscord
from tests.test_shard_processes import LAUNCH, ROOT, tail


@pytest.fixture
def restored_gc() -> Iterator[None]:
    """The test process's collector as it was, whatever the test did to it."""
    thresholds = gc.get_threshold()
    yield
    gc.unfreeze()
    gc.set_threshold(*thresholds)


@pytest.mark.usefixtures("restored_gc")
def test_settle_heap_freezes_what_survived_and_raises_the_thresholds() -> None:
    gc.unfreeze()
    assert gc.get_freeze_count() == 0
    frozen = settle_heap()
    assert frozen == gc.get_freeze_count() > 1000  # every module, class and function so far
    assert gc.get_threshold() == THRESHOLDS
    # What jobs make afterwards is still collected: a cycle made now is freed.
    survivor = [0]
    survivor.append(survivor)  # type: ignore[arg-type]
    del survivor
    assert gc.collect() > 0


async def test_the_bot_process_settles_its_heap_once_started(tmp_path: Path) -> None:
    log = tmp_path / "bot.log"
    env = {"PATH": os.environ.get("PATH", os.defpath), "HOME": str(tmp_path),
           "PYTHONPATH": str(ROOT), "DATA_DIR": str(tmp_path), "WEB_PORT": "0",
           "DISCORD_TOKEN": FAKE_TOKEN, "LOG_LEVEL": "INFO"}  # fmt: skip
    async with FakeDiscord() as fake:
        with log.open("ab") as stderr:
            process = await asyncio.create_subprocess_exec(
                sys.executable, "-c", LAUNCH, fake.base_url, cwd=tmp_path, env=env,
                stdout=asyncio.subprocess.DEVNULL, stderr=stderr,
            )  # fmt: skip
        try:
            for _ in range(3000):
                if "heap settled" in log.read_text(errors="replace"):
                    break
                assert process.returncode is None, tail(log)
                await asyncio.sleep(0.01)
            else:
                raise TimeoutError(f"no heap settled: {tail(log)}")
        finally:
            process.send_signal(signal.SIGTERM)
            assert await asyncio.wait_for(process.wait(), 60) == 0, tail(log)
    assert log.read_text().count("heap settled") == 1
