"""The JSON shapes fronts hand out (HTTP API, CLI --json, webhooks): one definition each, so
the same fact has the same name everywhere. Money leaves as USD numbers, with the exact integer
micro-dollars beside them where a reader may need to add them up."""

from __future__ import annotations

from typing import Any

from bot.catalog import ModelSpec
from bot.ledger import ImageRecord, UsageReport
from bot.money import micro_to_usd_decimal


def usd(micro_usd: int) -> float:
    """Micro-dollars as a JSON number of dollars (exact for every value the ledger holds)."""
    return float(micro_to_usd_decimal(micro_usd))


def model_json(spec: ModelSpec) -> dict[str, Any]:
    cost = spec.default_cost()
    return {
        "id": spec.id,
        "name": spec.name,
        "capabilities": sorted(spec.capabilities),
        "cost_per_image": usd(cost.micro_usd),
        "cost_per_image_micro_usd": cost.micro_usd,
        "neurons_per_image": cost.milli_neurons / 1000,
        "price_published": spec.price_published,
        "price_source": spec.price_source,
        "price_note": spec.price_note or None,
        "default_width": spec.default_width,
        "default_height": spec.default_height,
        "sizes": "fixed" if spec.fixed_size else [spec.min_side, spec.max_side],
        "steps": [spec.min_steps, spec.max_steps, spec.default_steps],
        "speed_seconds": spec.typical_seconds,
        "description": spec.description,
    }


def report_json(report: UsageReport) -> dict[str, Any]:
    """Totals, per user, per model and per day of a usage report."""
    return {
        "from": report.start_day,
        "to": report.end_day,
        "total_images": report.total_images,
        "total_cost": usd(report.total_micro_usd),
        "total_cost_micro_usd": report.total_micro_usd,
        "total_neurons": report.total_milli_neurons / 1000,
        "average_cost": usd(report.average_micro_usd),
        "users": [
            {"user_id": u.user_id, "images": u.images, "cost": usd(u.micro_usd),
             "cost_micro_usd": u.micro_usd}
            for u in report.users
        ],
        "by_model": {m: {"images": i, "cost": usd(c)} for m, (i, c) in report.by_model.items()},
        "by_day": {d: {"images": i, "cost": usd(c)} for d, (i, c) in report.by_day.items()},
    }  # fmt: skip


def image_to_public(image: ImageRecord) -> dict[str, Any]:
    """The image record as fronts show it (HTTP API, CLI --json, webhooks); cost in USD."""
    return {
        "id": image.id,
        "kind": image.kind,
        "prompt": image.prompt,
        "prompt_used": image.prompt_used,
        "negative_prompt": image.negative_prompt,
        "model": image.model,
        "storage_key": image.storage_key,
        "url": image.url,
        "width": image.width,
        "height": image.height,
        "steps": image.steps,
        "seed": image.seed,
        "created_at": image.created_at,
        "user_id": image.user_id,
        "guild_id": image.guild_id or None,
        "cost": usd(image.cost_micro_usd),
        "cost_micro_usd": image.cost_micro_usd,
        "cached": image.cached,
        "is_deleted": image.is_deleted,
        "source_image_id": image.source_image_id,
        "metadata": image.metadata,
    }
