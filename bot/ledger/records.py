"""Plain records the ledger reads and writes. No behaviour beyond conversion."""

from __future__ import annotations

import json
import secrets
from dataclasses import dataclass, field
from typing import Any

from bot.catalog import Cost
from bot.days import next_utc_midnight as next_utc_midnight  # re-exported for the ledger
from bot.days import utc_day as utc_day

OPEN_STATES = ("reserved", "generating", "storing")
# How a result reached its user: through the interaction that asked, another Discord way, the
# API or CLI answer; 'undelivered' when every way failed (then the job is refunded).
DELIVERY_WAYS = ("interaction", "channel", "dm", "undelivered", "api", "cli")


def new_id(prefix: str) -> str:
    return f"{prefix}_{secrets.token_hex(10)}"


@dataclass(frozen=True)
class Limits:
    """The limits one reservation is checked against (all integers, per UTC day)."""

    user_images: int
    user_micro_usd: int
    guild_micro_usd: int
    milli_neurons: int
    user_uploads: int = 2**62  # uploads per user per day, all servers together
    user_upload_bytes: int = 2**62


@dataclass(frozen=True)
class Usage:
    images: int = 0
    micro_usd: int = 0
    milli_neurons: int = 0


@dataclass(frozen=True)
class NewJob:
    """A request that may cost money, as it asks to be reserved."""

    kind: str
    user_id: str
    guild_id: str
    cost: Cost
    images: int
    model: str | None = None
    idempotency_key: str | None = None
    params: dict[str, Any] | None = None
    fingerprint: str | None = None
    bytes: int = 0


@dataclass(frozen=True)
class Job:
    id: str
    idempotency_key: str | None
    kind: str
    user_id: str
    guild_id: str
    day: str
    model: str | None
    state: str
    images: int
    micro_usd: int
    milli_neurons: int
    planned_image_ids: list[str]
    params: dict[str, Any]
    error_code: str | None
    error_message: str | None
    created_at: str
    fingerprint: str | None = None  # of the normalised request, to spot a reused key
    bytes: int = 0  # an upload's size
    delivery: str | None = None  # how the result reached its user (see DELIVERY_WAYS)
    note: str | None = None  # e.g. a content check's verdict ("moderation:S12")

    @classmethod
    def from_row(cls, row: Any) -> Job:
        return cls(
            id=row["id"],
            idempotency_key=row["idempotency_key"],
            kind=row["kind"],
            user_id=row["user_id"],
            guild_id=row["guild_id"],
            day=row["day"],
            model=row["model"],
            state=row["state"],
            images=row["images"],
            micro_usd=row["micro_usd"],
            milli_neurons=row["milli_neurons"],
            planned_image_ids=json.loads(row["planned_image_ids"]),
            params=json.loads(row["params"]),
            error_code=row["error_code"],
            error_message=row["error_message"],
            created_at=row["created_at"],
            fingerprint=row["request_fingerprint"],
            bytes=row["bytes"],
            delivery=row["delivery"],
            note=row["note"],
        )

    @property
    def is_open(self) -> bool:
        return self.state in OPEN_STATES


@dataclass(frozen=True)
class ImageRecord:
    """One hosted image: generated or uploaded. Its cost is the price actually charged."""

    id: str
    kind: str
    user_id: str
    guild_id: str
    width: int
    height: int
    store: str
    storage_key: str
    url: str
    content_type: str
    bytes: int
    created_at: str
    job_id: str | None = None
    prompt: str | None = None
    prompt_used: str | None = None
    negative_prompt: str | None = None
    model: str | None = None
    steps: int | None = None
    seed: int | None = None
    guidance: float | None = None
    strength: float | None = None
    source_image_id: str | None = None
    cost_micro_usd: int = 0
    cost_milli_neurons: int = 0
    cached: bool = False
    cache_key: str | None = None
    cache_scope: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)
    is_deleted: bool = False
    deleted_at: str | None = None
    private: bool = False  # only its owner may see or reuse it (never the server)

    COLUMNS = (
        "id", "kind", "job_id", "user_id", "guild_id", "prompt", "prompt_used",
        "negative_prompt", "model", "width", "height", "steps", "seed", "guidance", "strength",
        "source_image_id", "store", "storage_key", "url", "content_type", "bytes",
        "cost_micro_usd", "cost_milli_neurons", "cached", "cache_key", "cache_scope",
        "metadata", "is_deleted", "deleted_at", "created_at", "private",
    )  # fmt: skip

    def to_row(self) -> tuple[Any, ...]:
        values = {**self.__dict__, "metadata": json.dumps(self.metadata, sort_keys=True)}
        values["cached"] = int(self.cached)
        values["is_deleted"] = int(self.is_deleted)
        values["private"] = int(self.private)
        return tuple(values[c] for c in self.COLUMNS)

    @classmethod
    def from_row(cls, row: Any) -> ImageRecord:
        values = {c: row[c] for c in cls.COLUMNS}
        values["metadata"] = json.loads(values["metadata"])
        values["cached"] = bool(values["cached"])
        values["is_deleted"] = bool(values["is_deleted"])
        values["private"] = bool(values["private"])
        return cls(**values)


@dataclass(frozen=True)
class Template:
    id: str
    guild_id: str
    name: str
    prompt: str
    created_by: str
    created_at: str
    model: str | None = None
    negative_prompt: str | None = None
    aspect_ratio: str | None = None
    steps: int | None = None

    COLUMNS = (
        "id", "guild_id", "name", "prompt", "model", "negative_prompt", "aspect_ratio",
        "steps", "created_by", "created_at",
    )  # fmt: skip

    @classmethod
    def from_row(cls, row: Any) -> Template:
        return cls(**{c: row[c] for c in cls.COLUMNS})

    def apply(self, user_prompt: str) -> str:
        """``{prompt}`` marks where the user's prompt goes; otherwise it is appended."""
        if "{prompt}" in self.prompt:
            return self.prompt.replace("{prompt}", user_prompt)
        return f"{self.prompt}, {user_prompt}" if user_prompt else self.prompt


@dataclass(frozen=True)
class UserUsage:
    user_id: str
    images: int
    micro_usd: int


@dataclass(frozen=True)
class UsageReport:
    """Totals over a period; money in micro-dollars."""

    start_day: str
    end_day: str
    total_images: int
    total_micro_usd: int
    total_milli_neurons: int
    users: list[UserUsage]
    by_model: dict[str, tuple[int, int]]  # model → (images, micro_usd)
    by_day: dict[str, tuple[int, int]]  # day → (images, micro_usd)

    @property
    def average_micro_usd(self) -> int:
        return self.total_micro_usd // self.total_images if self.total_images else 0


@dataclass(frozen=True)
class ApiKey:
    """An API key as stored: only a hash of the secret, plus a hint to recognise it."""

    id: str
    user_id: str
    guild_id: str
    name: str
    key_hash: str
    hint: str
    webhook_secret: str
    created_at: str
    revoked_at: str | None = None

    COLUMNS = (
        "id", "user_id", "guild_id", "name", "key_hash", "hint", "webhook_secret",
        "created_at", "revoked_at",
    )  # fmt: skip

    @classmethod
    def from_row(cls, row: Any) -> ApiKey:
        return cls(**{c: row[c] for c in cls.COLUMNS})


@dataclass(frozen=True)
class BatchItem:
    batch_id: str
    position: int
    prompt: str
    state: str
    image_id: str | None = None
    error_code: str | None = None
    error_message: str | None = None

    @classmethod
    def from_row(cls, row: Any) -> BatchItem:
        return cls(
            row["batch_id"], row["position"], row["prompt"], row["state"], row["image_id"],
            row["error_code"], row["error_message"],
        )  # fmt: skip


@dataclass(frozen=True)
class Batch:
    id: str
    key_id: str
    user_id: str
    guild_id: str
    model: str | None
    webhook_url: str | None
    state: str
    webhook_state: str | None
    webhook_attempts: int
    created_at: str
    finished_at: str | None
    items: list[BatchItem] = field(default_factory=list)

    @classmethod
    def from_row(cls, row: Any, items: list[BatchItem]) -> Batch:
        return cls(
            row["id"], row["key_id"], row["user_id"], row["guild_id"], row["model"],
            row["webhook_url"], row["state"], row["webhook_state"], row["webhook_attempts"],
            row["created_at"], row["finished_at"], items,
        )  # fmt: skip
