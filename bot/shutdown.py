"""A clean stop on SIGTERM or SIGINT, for every long-running process (``serve`` and the bot),
and for the one-shot commands of ``bot.cli`` (``one_shot``: the command is cancelled at once).

The first signal asks for a stop: the process refuses new work, lets running jobs finish for up
to ``SHUTDOWN_GRACE_SECONDS``, cancels (and so refunds) the rest, gives its lease up at once and
closes the ledger, then exits 0. A second signal exits at once, as a kill would: what is still
open is then closed by another process once the lease runs out, or by this one's next start.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
from collections.abc import Callable, Coroutine, Iterator
from typing import Any

from bot.service import ImageService

log = logging.getLogger(__name__)

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)
DRAINING = "stopping (new work is refused; running jobs may finish)"


class StopSignals:
    """Counts stop signals: the first calls ``on_stop`` (and sets ``requested``), a second one
    ends the process on the spot with 128 + the signal's number, the shell's convention."""

    def __init__(
        self, on_stop: Callable[[], object] | None = None, doing: str = DRAINING
    ) -> None:
        self.requested = asyncio.Event()
        self.signum: int | None = None  # the first signal's number, once one came
        self._on_stop = on_stop
        self._doing = doing
        self.exit: Callable[[int], object] = os._exit  # tests replace it

    def received(self, signum: int) -> None:
        name = signal.Signals(signum).name
        if self.requested.is_set():
            log.warning("%s again: exiting now, without waiting for running jobs", name)
            for handler in logging.getLogger().handlers:
                handler.flush()
            self.exit(128 + signum)
            return
        log.warning("%s: %s", name, self._doing)
        self.signum = signum
        self.requested.set()
        if self._on_stop is not None:
            self._on_stop()


@contextlib.contextmanager
def stop_signals(
    on_stop: Callable[[], object] | None = None, doing: str = DRAINING
) -> Iterator[StopSignals]:
    """SIGTERM and SIGINT handled on the running loop while inside (put back on the way out);
    ``doing`` is what the first one's log line says happens now."""
    loop = asyncio.get_running_loop()
    signals = StopSignals(on_stop, doing)
    for signum in STOP_SIGNALS:
        loop.add_signal_handler(signum, signals.received, signum)
    try:
        yield signals
    finally:
        for signum in STOP_SIGNALS:
            loop.remove_signal_handler(signum)


async def drain(service: ImageService, grace_seconds: float) -> int:
    """Refuse new work, let running jobs finish for up to ``grace_seconds``, refund the rest;
    how many were cancelled (logged, so an operator sees a stop that cut jobs short)."""
    cancelled = await service.drain(grace_seconds)
    if cancelled:
        log.warning("stopping: %d job(s) did not finish within %g s and were refunded",
                    cancelled, grace_seconds)  # fmt: skip
    else:
        log.info("stopping: no job left running")
    return cancelled


async def one_shot(work: Coroutine[Any, Any, int]) -> tuple[int, int | None]:
    """Run a one-shot command (``python -m bot imagine`` …) with a clean stop: the first SIGTERM
    or SIGINT cancels it, so a job in flight is refunded as a failed one is (what was already
    stored stays charged), and its ``async with`` blocks give the lease up and close the ledger.
    Its exit status and None, or 128 + the signal's number and that number once stopped. A
    second signal exits at once."""
    task = asyncio.ensure_future(work)
    with stop_signals(task.cancel, "stopping (the command is cancelled)") as stop:
        try:
            return await task, None
        except asyncio.CancelledError:
            if stop.signum is None:
                raise
    return 128 + stop.signum, stop.signum
