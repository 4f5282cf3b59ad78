"""Telling the requester where their job is: queued (with its place), generating, storing,
done. A request without a progress callback is told nothing."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta

from bot.catalog import ModelSpec
from bot.requests import GenerateRequest, Progress


def position_reporter(request: GenerateRequest, job_id: str) -> Callable[[int], None] | None:
    """A callback for the scheduler's queue position of job ``job_id``, or None."""
    progress = request.progress
    if progress is None:
        return None

    def report(position: int) -> None:
        progress(Progress("queued", position=position, job_id=job_id))

    return report


def report(request: GenerateRequest, stage: str, spec: ModelSpec, job_id: str) -> None:
    if request.progress is None:
        return
    now = datetime.now(UTC)
    eta = now + timedelta(seconds=spec.typical_seconds) if stage == "generating" else None
    request.progress(Progress(stage, started_at=now, eta=eta, job_id=job_id))
