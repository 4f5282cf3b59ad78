"""What fronts hand the service, and what they get back.

The ledger's records fronts show (images, templates, keys, reports) are re-exported here, so
no front imports the ledger itself.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from bot.catalog import Cost
from bot.ledger.records import ApiKey as ApiKey
from bot.ledger.records import ImageRecord as ImageRecord
from bot.ledger.records import Limits, Usage
from bot.ledger.records import Template as Template
from bot.ledger.records import UsageReport as UsageReport


@dataclass(frozen=True)
class Progress:
    """A step of a job, for progress messages. ``position`` is set while queued."""

    stage: str  # 'queued' | 'generating' | 'storing' | 'done'
    position: int | None = None
    started_at: datetime | None = None
    eta: datetime | None = None
    job_id: str | None = None  # the reserved job (a Cancel button carries it)


ProgressCallback = Callable[[Progress], None]


@dataclass(frozen=True)
class GenerateRequest:
    """One /imagine (or CLI / API call). Only ``prompt`` and ``user_id`` are required."""

    prompt: str
    user_id: str
    guild_id: str = ""
    model: str | None = None
    template: str | None = None
    negative_prompt: str | None = None
    width: int | None = None
    height: int | None = None
    aspect_ratio: str | None = None
    seed: int | None = None
    steps: int | None = None
    guidance: float | None = None
    count: int = 1
    image_id: str | None = None
    init_image: bytes | None = None
    strength: float | None = None
    enhance: bool = False
    fresh: bool = False
    private: bool = False  # only the requester sees it: never shared through the cache
    idempotency_key: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)  # any JSON object (≤ 1 KB)
    allowance_hold: str | None = None  # the job holding a batch's allowance, drawn on first
    role_ids: tuple[str, ...] = ()  # the member's roles in the server: they pick the limits
    # Asked in an age-restricted channel (a thread: its parent's flag); False in DMs, the API
    # and the CLI. With the server's rule allowing it, the prompt is then not moderated.
    age_restricted: bool = False
    progress: ProgressCallback | None = field(default=None, compare=False, repr=False)


@dataclass(frozen=True)
class Remaining:
    """What is left of the user's quota today."""

    images: int
    micro_usd: int
    resets_at: datetime

    @classmethod
    def of(cls, limits: Limits, used: Usage, resets_at: datetime) -> Remaining:
        """What the user's ``limits`` leave after ``used`` (the one place this is counted)."""
        return cls(
            images=max(0, limits.user_images - used.images),
            micro_usd=max(0, limits.user_micro_usd - used.micro_usd),
            resets_at=resets_at,
        )


@dataclass(frozen=True)
class GenerationResult:
    images: list[ImageRecord]
    prompt: str
    prompt_used: str
    enhanced: bool
    cost: Cost
    remaining: Remaining
    job_id: str
    replayed: bool = False
    failed: int = 0
    withdrawn: bool = False  # cancelled once generating: delivered to its owner privately

    @property
    def cached(self) -> bool:
        return all(image.cached for image in self.images)


@dataclass(frozen=True)
class Cancellation:
    """What a cancel did. ``outcome``: ``cancelled`` (before the provider call: refunded),
    ``too_late`` (generating: still made, charged, delivered privately), ``already`` (cancelled
    before), ``ended`` (not running; ``state`` says how it ended: settled or refunded).
    ``charged_micro_usd``: what stays charged on ``cancelled`` (the prompt enhancement and the
    content check that already ran for it)."""

    outcome: str
    job_id: str
    user_id: str
    state: str = ""
    refunded_micro_usd: int = 0
    charged_micro_usd: int = 0
    charged_for: str = ""  # 'prompt enhancement', 'content check', or both


@dataclass(frozen=True)
class QueuedJob:
    """One of a user's jobs in flight, for /queue."""

    job_id: str
    model: str
    prompt: str
    stage: str  # 'queued' | 'generating' | 'storing'
    position: int | None  # in the bot's queue, while queued
    eta: datetime
    withdrawn: bool = False


@dataclass(frozen=True)
class QueueStatus:
    """A user's jobs in one server, and that server's queue."""

    jobs: list[QueuedJob]
    waiting_here: int  # jobs of this server waiting for a slot
    running_here: int  # jobs of this server generating or storing
    waiting_all: int  # the whole bot's queue
