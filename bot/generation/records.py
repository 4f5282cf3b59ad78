"""The records a generation writes besides each image's own (``bot.image_records``): the job it
reserves and the free copies cache hits become. Pure functions of the plan, so the pipeline
stays a sequence."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from bot.catalog import ZERO_COST, Cost
from bot.generation.plan import Plan, Slot
from bot.idempotency import request_fingerprint
from bot.ledger import ImageRecord
from bot.ledger.ledger import NewJob
from bot.ledger.records import new_id
from bot.requests import GenerateRequest


def new_job(
    request: GenerateRequest, plan: Plan, own: list[Slot], prompt_used: str, *, images: int
) -> NewJob:
    """The job reserving ``images`` of the plan; its params let recovery finish it alone."""
    return NewJob(
        kind="generate",
        user_id=request.user_id,
        guild_id=request.guild_id,
        cost=plan.cost_of(images),
        images=images,
        model=plan.spec.id,
        idempotency_key=request.idempotency_key,
        fingerprint=request_fingerprint(request),
        params={
            "prompt": plan.prompt,
            "prompt_used": prompt_used,
            "negative_prompt": plan.negative_prompt,
            "width": plan.width,
            "height": plan.height,
            "steps": plan.steps,
            "guidance": plan.guidance,
            "strength": plan.strength,
            "source_image_id": plan.source_image_id,
            "cache_scope": plan.cache_scope,
            "unit_micro_usd": plan.unit_cost.micro_usd,
            "unit_milli_neurons": plan.unit_cost.milli_neurons,
            "metadata": dict(request.metadata),
            "private": request.private,
            "slots": [
                {"id": new_id("img"), "seed": s.seed, "cache_key": s.cache_key} for s in own
            ],
        },
    )


def hit_records(
    request: GenerateRequest,
    hits: dict[int, ImageRecord],
    job_id: str,
    created_at: str,
    ids: dict[int, str] | None = None,
) -> dict[int, ImageRecord]:
    """Each cache hit becomes the requester's own free record pointing at the same bytes."""
    return {
        index: replace(
            source,
            id=(ids or {}).get(index) or new_id("img"),
            job_id=job_id,
            user_id=request.user_id,
            guild_id=request.guild_id,
            cost_micro_usd=0,
            cost_milli_neurons=0,
            cached=True,
            private=request.private,
            metadata=dict(request.metadata),
            created_at=created_at,
        )
        for index, source in sorted(hits.items())
    }


def total_cost(records: Any) -> Cost:
    total = ZERO_COST
    for record in records:
        total = total + Cost(record.cost_micro_usd, record.cost_milli_neurons)
    return total

