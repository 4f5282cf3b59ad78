"""The event-loop lag probe (LOOP_LAG_PROBE) sees a stall, names what held the loop, logs it
(at exit and on SIGUSR1, which starts over), and costs nothing off."""

from __future__ import annotations

import asyncio
import gc
import linecache
import logging
import os
import signal
import threading
import time

import pytest

from bot.loop_probe import LoopLagProbe, loop_lag_probe


async def test_a_blocking_call_shows_as_the_worst_stall(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, "bot.loop_probe")
    linecache.clearcache()
    async with loop_lag_probe(True) as probe:
        assert probe is not None
        await asyncio.sleep(0.05)
        time.sleep(0.2)  # noqa: ASYNC251 - holds the loop on purpose, as CPU work on it would
        await asyncio.sleep(0.05)
    assert probe.worst >= 0.15
    assert probe.ticks > 0
    assert "worst stall" in caplog.text
    # The watchdog sampled the loop thread inside the stall: the frame that blocked it.
    assert "test_a_blocking_call_shows_as_the_worst_stall" in probe.worst_where
    assert "test_loop_probe.py" in caplog.text
    # ...without loading the sampled files' source into memory (a full entry has 4 fields).
    assert all(len(entry) < 4 for entry in linecache.cache.values())


async def test_sigusr1_reports_and_starts_over(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    caplog.set_level(logging.WARNING, "bot.loop_probe")
    # What the probe holds just after the signal's report, read in the same callback: any
    # loop turn later, a loaded machine's next stall (a busy core, a collection of a large
    # heap) is already counted again, so the state then says nothing about the reset.
    after_reset: list[tuple[float, str, int, list[int]]] = []
    report = LoopLagProbe.report

    def report_and_look(self: LoopLagProbe, reset: bool = False) -> None:
        report(self, reset)
        if reset:
            after_reset.append((self.worst, self.worst_where, self.ticks, self.collections))

    monkeypatch.setattr(LoopLagProbe, "report", report_and_look)
    async with loop_lag_probe(True) as probe:
        assert probe is not None
        await asyncio.sleep(0.05)
        time.sleep(0.1)  # noqa: ASYNC251 - a stall before the signal
        await asyncio.sleep(0.05)
        assert probe.worst >= 0.05
        os.kill(os.getpid(), signal.SIGUSR1)
        for _ in range(3000):  # a bound against a hang only: the signal's report ends it
            if after_reset:
                break
            await asyncio.sleep(0.01)
        assert "worst stall" in caplog.text
        assert after_reset == [(0.0, "", 0, [0, 0, 0])]  # counted again from the signal on
    assert caplog.text.count("worst stall") == 2  # the signal's report and the exit's
    assert not any(t.name == "loop-lag-watchdog" for t in threading.enumerate())


async def test_garbage_collections_are_timed() -> None:
    async with loop_lag_probe(True) as probe:
        assert probe is not None
        garbage = [[i] for i in range(200_000)]
        for item in garbage:
            item.append(item)  # cycles: only the collector frees them
        del garbage, item
        gc.collect()
        await asyncio.sleep(0.02)
    assert probe.gc_worst > 0
    assert probe.on_gc not in gc.callbacks


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
