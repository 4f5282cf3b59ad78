"""The collector after start-up (bot/heap.py): start-up's survivors frozen, thresholds raised,
and ``python -m bot`` does it once start-up is done, before the gateway connects."""

from __future__ import annotations

import gc
from collections.abc import Iterator
from pathlib import Path

import pytest

from bot.heap import THRESHOLDS, settle_heap
from tests.fakes.discord import FakeDiscord
from tests.test_shard_processes import shard_process, tail


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
    data, log = tmp_path / "data", tmp_path / "bot.log"
    data.mkdir()
    async with FakeDiscord() as fake:
        fake.add_guild("Shard Zero", shard=(0, 2))
        async with shard_process(fake, data, 0, log):  # yields once the gateway is connected
            assert "heap settled" in log.read_text(errors="replace"), tail(log)
    assert log.read_text().count("heap settled") == 1
