"""The event-loop lag probe (LOOP_LAG_PROBE) sees a stall and logs it, and costs nothing off."""

from __future__ import annotations

import asyncio
import logging
import time

import pytest

from bot.loop_probe import loop_lag_probe


async def test_a_blocking_call_shows_as_the_worst_stall(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, "bot.loop_probe")
    async with loop_lag_probe(True) as probe:
        assert probe is not None
        await asyncio.sleep(0.05)
        time.sleep(0.2)  # noqa: ASYNC251 - holds the loop on purpose, as CPU work on it would
        await asyncio.sleep(0.05)
    assert probe.worst >= 0.15
    assert probe.ticks > 0
    assert "worst stall" in caplog.text


async def test_off_by_default_no_task_no_log(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, "bot.loop_probe")
    tasks = len(asyncio.all_tasks())
    async with loop_lag_probe(False) as probe:
        assert probe is None
        assert len(asyncio.all_tasks()) == tasks
    assert "worst stall" not in caplog.text


def test_httpcore_finds_sniffio_without_searching_the_disk() -> None:
    """httpcore imports sniffio for every lock it makes: it must be installed (a dependency),
    so each import is a lookup in sys.modules rather than a search of sys.path."""
    import importlib.util

    assert importlib.util.find_spec("sniffio") is not None
