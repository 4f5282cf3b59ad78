"""The record of a stored image, built in one place from the job that made it.

A job's params hold everything its images share (prompt, settings, cache scope, metadata) and
one slot per image (id, seed, cache key), so the generation pipeline, an upload and crash
recovery all describe an image the same way; only what the bytes say and the price differ.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from bot.catalog import Cost
from bot.ledger import ImageRecord, Job
from bot.stores.base import StoredImage


@dataclass(frozen=True)
class StoredBytes:
    """What the store holds for an image and what its bytes say about themselves."""

    stored: StoredImage
    store: str  # the store's name, recorded so a later switch of backend still finds it
    content_type: str
    width: int
    height: int
    size: int


def image_record(
    job: Job,
    image_id: str,
    held: StoredBytes,
    *,
    cost: Cost,
    seed_shown: bool,
    created_at: str,
    extra_metadata: dict[str, Any] | None = None,
) -> ImageRecord:
    params: dict[str, Any] = job.params
    slots: list[dict[str, Any]] = params.get("slots", [])
    slot = next((s for s in slots if s.get("id") == image_id), {})
    return ImageRecord(
        id=image_id,
        kind="generated" if job.kind == "generate" else "upload",
        job_id=job.id,
        user_id=job.user_id,
        guild_id=job.guild_id,
        prompt=params.get("prompt"),
        prompt_used=params.get("prompt_used"),
        negative_prompt=params.get("negative_prompt"),
        model=job.model,
        width=held.width,
        height=held.height,
        steps=params.get("steps"),
        seed=slot.get("seed") if seed_shown else None,
        guidance=params.get("guidance"),
        strength=params.get("strength"),
        source_image_id=params.get("source_image_id"),
        store=held.store,
        storage_key=held.stored.key,
        url=held.stored.url,
        content_type=held.content_type,
        bytes=held.size,
        cost_micro_usd=cost.micro_usd,
        cost_milli_neurons=cost.milli_neurons,
        cache_key=slot.get("cache_key") if params.get("cache_scope") else None,
        cache_scope=params.get("cache_scope"),
        metadata={**params.get("metadata", {}), **(extra_metadata or {})},
        created_at=created_at,
        private=bool(params.get("private", False)),
    )
