"""A cheap event-loop lag probe (LOOP_LAG_PROBE): a timer that should fire every 10 ms; how
late it fires is how long something held the loop. A watchdog thread names the stall: when the
loop is late by more than ``SAMPLE_AFTER`` it samples the loop thread's stack (or notes that a
garbage collection is running), so the log says *what* held the loop, not only how long.

The worst stall (with its sample) is logged when the probe stops, and on SIGUSR1, which also
starts the count over: a benchmark sends it after its warm-up and after its burst, so start-up
imports are not mistaken for a stall under load.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import signal
import sys
import threading
import time
from collections.abc import AsyncIterator
from types import FrameType
from typing import Any

log = logging.getLogger(__name__)

TICK = 0.01
SAMPLE_AFTER = 0.03  # a stall this long gets its stack sampled
FRAMES = 4  # innermost frames kept in a sample
# SIGUSR1 (report and start over) is an extra: loops without Unix signals (Windows) raise
# NotImplementedError, and a loop outside the main thread RuntimeError; the probe runs without.
NO_SIGNAL_HANDLERS = (NotImplementedError, RuntimeError)


def where(frame: FrameType | None) -> str:
    """The innermost ``FRAMES`` frames, innermost first, as ``name (file:line)``. Read from the
    frames themselves: ``traceback`` would load each file's source into ``linecache``, megabytes
    the probe would then count in the very memory it helps to measure."""
    parts: list[str] = []
    while frame is not None and len(parts) < FRAMES:
        code = frame.f_code
        parts.append(f"{code.co_name} ({code.co_filename.rsplit('/', 1)[-1]}:{frame.f_lineno})")
        frame = frame.f_back
    return " < ".join(parts)


class LoopLagProbe:
    """Measures the loop's worst stall while running (``worst``, in seconds) and what the loop
    was doing in it (``worst_where``); ``gc_worst`` is the longest garbage collection."""

    def __init__(self) -> None:
        self.worst = 0.0
        self.worst_where = ""
        self.gc_worst = 0.0
        self.collections = [0, 0, 0]  # garbage collections by generation
        self.ticks = 0
        self._last_tick = time.perf_counter()
        self._sample = ""  # what the current stall is doing, if sampled
        self._sampled_tick = -1  # the tick count ``_sample`` was taken at
        self._gc_started: float | None = None
        self._gc_generation = 0
        self._loop_thread = threading.get_ident()
        self._stop = threading.Event()

    async def run(self) -> None:
        while True:
            expected = time.perf_counter() + TICK
            await asyncio.sleep(TICK)
            now = time.perf_counter()
            late = now - expected
            # A sample counts only for the stall it was taken in: one the watchdog took as this
            # tick was being counted (it read the old tick time) would otherwise stand for the
            # next stall and keep that one from being sampled at all.
            sample = self._sample if self._sampled_tick == self.ticks else ""
            if late > self.worst:
                self.worst, self.worst_where = late, sample if late > SAMPLE_AFTER else ""
            self._last_tick = now
            self.ticks += 1

    def watch(self) -> None:
        """The watchdog thread's body: sample the loop thread once per stall."""
        while not self._stop.wait(TICK / 2):
            tick = self.ticks  # read before the tick time: a sample is tagged no later
            if self._sampled_tick == tick:
                continue
            if time.perf_counter() - self._last_tick < TICK + SAMPLE_AFTER:
                continue
            if self._gc_started is not None:
                self._sample = f"garbage collection of generation {self._gc_generation}"
            else:
                frame = sys._current_frames().get(self._loop_thread)
                if frame is None:
                    continue
                self._sample = where(frame)
            self._sampled_tick = tick

    def on_gc(self, phase: str, info: dict[str, Any]) -> None:
        """gc.callbacks hook: time each collection."""
        if phase == "start":
            self._gc_started, self._gc_generation = time.perf_counter(), info["generation"]
            self.collections[info["generation"]] += 1
        elif self._gc_started is not None:
            self.gc_worst = max(self.gc_worst, time.perf_counter() - self._gc_started)
            self._gc_started = None

    def report(self, reset: bool = False) -> None:
        """Log the worst stall so far (and what it was doing); ``reset`` starts over."""
        log.warning("loop lag probe: worst stall %.1f ms over %d ticks (longest gc %.1f ms, "
                    "collections by generation %s)%s", self.worst * 1000, self.ticks,
                    self.gc_worst * 1000, "/".join(map(str, self.collections)),
                    f" in {self.worst_where}" if self.worst_where else "")  # fmt: skip
        if reset:
            self.worst, self.worst_where, self.gc_worst, self.ticks = 0.0, "", 0.0, 0
            self._sampled_tick = -1
            self.collections = [0, 0, 0]

    def stop(self) -> None:
        self._stop.set()


@contextlib.asynccontextmanager
async def loop_lag_probe(enabled: bool) -> AsyncIterator[LoopLagProbe | None]:
    """While inside, probe the loop (if ``enabled``); log the worst stall on the way out."""
    if not enabled:
        yield None
        return
    probe = LoopLagProbe()
    task = asyncio.create_task(probe.run())
    watchdog = threading.Thread(target=probe.watch, name="loop-lag-watchdog", daemon=True)
    watchdog.start()
    gc.callbacks.append(probe.on_gc)
    loop = asyncio.get_running_loop()
    with contextlib.suppress(*NO_SIGNAL_HANDLERS):
        loop.add_signal_handler(signal.SIGUSR1, probe.report, True)
    try:
        yield probe
    finally:
        with contextlib.suppress(*NO_SIGNAL_HANDLERS):
            loop.remove_signal_handler(signal.SIGUSR1)
        gc.callbacks.remove(probe.on_gc)
        probe.stop()
        watchdog.join()
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        probe.report()
