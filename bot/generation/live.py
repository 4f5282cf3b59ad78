"""Jobs in flight: cancelling them, and where each one is (for /queue).

A job is live here from its reservation until its charge is written. Cancelling it before the
provider call takes it out of the scheduler's line at once (``Ticket.leave``), and the pipeline,
which checks the flag at its step boundaries, refunds it with reason ``cancelled``: the image
is not charged. Model calls already made for it (the prompt enhancement, the content check) ran
and were billed, so they stay charged, and the cancel says how much (``paid_micro_usd``). Once
the provider call has started the money is spent: the job runs on, is charged, and its result
goes to its owner privately (``withdrawn``). ETAs come from a moving average of the last
``RECENT`` job durations per model, kept in memory (bounded: the catalog's models).
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import deque
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from bot.errors import Forbidden, JobCancelled, NotFound
from bot.ledger import Ledger
from bot.requests import Cancellation, QueuedJob, QueueStatus
from bot.scheduler import Ticket

RECENT = 20  # durations remembered per model
NOT_YOURS = "Only the person who started this job, or a server admin, can cancel it."


@dataclass(eq=False)
class LiveJob:
    """One reserved job while it runs. ``cancelled``: before the provider call (refunded);
    ``withdrawn``: after it (charged, delivered privately)."""

    job_id: str
    user_id: str
    guild_id: str
    model: str
    prompt: str
    typical_seconds: float
    ticket: Ticket = field(default_factory=Ticket)
    stage: str = "queued"  # 'queued' | 'generating' | 'storing'
    started: float | None = None  # time.monotonic() when the provider call began
    paid_micro_usd: int = 0  # model calls made for it first (enhancement, check): charged
    paid_for: str = ""  # which: 'prompt enhancement', 'content check', or both
    cancelled: bool = False
    withdrawn: bool = False
    written: asyncio.Event = field(default_factory=asyncio.Event)  # charge or refund written

    def check(self) -> None:
        """A step boundary: raise JobCancelled if the job was cancelled meanwhile."""
        if self.cancelled:
            raise JobCancelled


class LiveJobs:
    """Every live job of this process, by id; bounded by the scheduler's queue and slots."""

    def __init__(self, ledger: Ledger, parallel: int) -> None:
        self.ledger = ledger
        self.parallel = max(parallel, 1)
        self._jobs: dict[str, LiveJob] = {}
        self._recent: dict[str, deque[float]] = {}

    def add(
        self, job_id: str, user_id: str, guild_id: str, model: str, prompt: str, typical: float,
        paid: tuple[int, str] = (0, ""),
    ) -> LiveJob:
        """``paid``: what the model calls made for it first cost, and which they were."""
        live = LiveJob(job_id, user_id, guild_id, model, prompt, typical, paid_micro_usd=paid[0],
                       paid_for=paid[1])  # fmt: skip
        self._jobs[job_id] = live
        return live

    def get(self, job_id: str) -> LiveJob | None:
        return self._jobs.get(job_id)

    def start(self, live: LiveJob) -> None:
        """The provider call begins: from here a cancel no longer saves the money."""
        live.check()
        live.stage, live.started = "generating", time.monotonic()

    def written(self, live: LiveJob) -> None:
        """The job's charge or refund is in the ledger; remember how long it ran."""
        if live.started is not None and not live.written.is_set():
            recent = self._recent.setdefault(live.model, deque(maxlen=RECENT))
            recent.append(time.monotonic() - live.started)
        live.written.set()

    def forget(self, live: LiveJob) -> None:
        self._jobs.pop(live.job_id, None)
        live.written.set()

    # -- cancelling -------------------------------------------------------------------------

    async def cancel_job(
        self, job_id: str, *, requester_id: str, guild_id: str, is_admin: bool
    ) -> Cancellation:
        """Cancel a job for its owner or an admin of its server (Forbidden for anyone else).
        A job not live here (finished, or stopped by a restart) is looked up in the ledger."""
        live = self._jobs.get(job_id)
        if live is None:
            job = await self.ledger.get_job(job_id)
            if job is None or job.kind != "generate":
                raise NotFound("That job is unknown.")
            _may_cancel(job.user_id, job.guild_id, requester_id, guild_id, is_admin)
            outcome = "already" if job.error_code == JobCancelled.code else "ended"
            return Cancellation(outcome, job.id, job.user_id, job.state)
        _may_cancel(live.user_id, live.guild_id, requester_id, guild_id, is_admin)
        outcome = await self._cancel(live)
        if outcome != "cancelled":
            return Cancellation(outcome, job_id, live.user_id, live.stage)
        job = await self.ledger.get_job(job_id)
        refunded = job.micro_usd if job is not None and job.state == "refunded" else 0
        return Cancellation(outcome, job_id, live.user_id, "refunded", refunded,
                            live.paid_micro_usd, live.paid_for)  # fmt: skip

    async def _cancel(self, live: LiveJob) -> str:
        """``cancelled`` if the provider call had not started (once the refund is written),
        ``too_late`` if it had, ``already`` if the job was cancelled before."""
        if live.cancelled or live.withdrawn:
            return "already"
        if live.stage != "queued":
            live.withdrawn = True
            return "too_late"
        live.cancelled = True
        live.ticket.leave(JobCancelled())  # waiting in line: it leaves now; else ``check`` sees it
        await live.written.wait()
        return "cancelled"

    # -- where jobs are ---------------------------------------------------------------------

    def average_seconds(self, live: LiveJob) -> float:
        recent = self._recent.get(live.model)
        return sum(recent) / len(recent) if recent else live.typical_seconds

    def _overall_seconds(self, fallback: float) -> float:
        every = [d for recent in self._recent.values() for d in recent]
        return sum(every) / len(every) if every else fallback

    def eta(self, live: LiveJob, now: datetime) -> datetime:
        """When the job should be done: a queued job waits about one job duration per
        ``parallel`` jobs ahead of it, then runs for its model's average."""
        own = self.average_seconds(live)
        if live.started is not None:
            left = max(own - (time.monotonic() - live.started), 1.0)
            return now + timedelta(seconds=left)
        position = live.ticket.position or 0
        rounds = math.ceil(position / self.parallel)
        return now + timedelta(seconds=rounds * self._overall_seconds(own) + own)

    def _entry(self, j: LiveJob, now: datetime) -> QueuedJob:
        position, eta = j.ticket.position, self.eta(j, now)
        return QueuedJob(j.job_id, j.model, j.prompt, j.stage, position, eta, j.withdrawn)

    def status(self, user_id: str, guild_id: str, waiting_all: int) -> QueueStatus:
        now = datetime.now(UTC)
        here = [j for j in self._jobs.values() if j.guild_id == guild_id and not j.cancelled]
        mine = [self._entry(j, now) for j in here if j.user_id == user_id]
        mine.sort(key=lambda q: (q.position is not None, q.position or 0))
        waiting = sum(1 for j in here if j.ticket.position is not None)
        running = sum(1 for j in here if j.started is not None)
        return QueueStatus(mine, waiting, running, waiting_all)


def _may_cancel(owner: str, where: str, requester: str, guild: str, admin: bool) -> None:
    """The owner may cancel; so may an admin of the server the job runs in."""
    if requester != owner and not (admin and guild == where):
        raise Forbidden(NOT_YOURS)
