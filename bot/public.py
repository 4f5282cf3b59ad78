"""The JSON shapes fronts hand out (HTTP API, CLI --json, webhooks), each defined once as a
pydantic model: the builders below fill them, and the OpenAPI document describes them from the
same models, so what is documented is what is sent. Money leaves as USD numbers, with the exact
integer micro-dollars beside them where a reader may need to add them up."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, JsonValue

from bot.catalog import ModelSpec
from bot.ledger import ImageRecord, UsageReport
from bot.ledger.records import Batch, Template
from bot.money import micro_to_usd_decimal

NullableStr = str | None


def usd(micro_usd: int) -> float:
    """Micro-dollars as a JSON number of dollars (exact for every value the ledger holds)."""
    return float(micro_to_usd_decimal(micro_usd))


class Shape(BaseModel):
    """A response body: every field always present (documented as required), nothing extra."""

    model_config = ConfigDict(
        extra="forbid",
        frozen=True,
        json_schema_serialization_defaults_required=True,
        defer_build=True,
    )

    def to_json(self) -> dict[str, Any]:
        """The body as plain JSON values, under its public field names."""
        return self.model_dump(mode="json", by_alias=True)


class ErrorBody(Shape):
    """Every error: a short title and details (code, message, and the field at fault)."""

    error: str
    details: dict[str, Any]


class PublicImage(Shape):
    id: str = Field(pattern="^img_")
    kind: Literal["generated", "upload"]
    prompt: NullableStr
    prompt_used: NullableStr
    negative_prompt: NullableStr
    model: NullableStr
    storage_key: str
    url: str
    width: int
    height: int
    steps: int | None
    seed: int | None
    created_at: str
    user_id: str
    guild_id: NullableStr
    cost: float = Field(description="USD")
    cost_micro_usd: int
    cached: bool
    is_deleted: bool
    source_image_id: NullableStr
    metadata: dict[str, JsonValue]


class PublicModel(Shape):
    id: str
    name: str
    capabilities: list[str]
    cost_per_image: float
    cost_per_image_micro_usd: int
    neurons_per_image: float
    price_published: bool = Field(
        description="false: Cloudflare's pricing page lists no price for this model"
    )
    price_source: Literal["cloudflare", "operator", "default"]
    price_note: NullableStr
    default_width: int
    default_height: int
    sizes: Literal["fixed"] | tuple[int, int] = Field(description="'fixed', or [min, max] side")
    steps: tuple[int, int, int] = Field(description="[min, max, default]")
    speed_seconds: float
    description: str


class Usage(Shape):
    images: int
    cost: float


class UserUsage(Shape):
    user_id: str
    images: int
    cost: float
    cost_micro_usd: int


class UsageTotals(Shape):
    """Totals, per user, per model and per day of a usage report."""

    model_config = ConfigDict(populate_by_name=True)
    start_day: str = Field(alias="from")
    end_day: str = Field(alias="to")
    total_images: int
    total_cost: float
    total_cost_micro_usd: int
    total_neurons: float
    average_cost: float
    users: list[UserUsage]
    by_model: dict[str, Usage]
    by_day: dict[str, Usage]


class CostReport(UsageTotals):
    """GET /api/analytics/costs: a usage report and whose it is."""

    scope: Literal["user", "server"]


class PublicTemplate(Shape):
    id: str
    name: str
    prompt: str
    model: NullableStr
    negative_prompt: NullableStr
    aspect_ratio: NullableStr
    steps: int | None
    created_by: str
    created_at: str


class ItemError(Shape):
    code: NullableStr
    message: NullableStr


class PublicBatchItem(Shape):
    position: int
    prompt: str
    status: Literal["queued", "running", "done", "failed"]
    image: PublicImage | None
    error: ItemError | None


class BatchCounts(Shape):
    queued: int
    running: int
    done: int
    failed: int


class WebhookState(Shape):
    state: Literal["pending", "delivered", "failed"] | None
    attempts: int


class PublicBatch(Shape):
    id: str
    status: Literal["running", "done"]
    model: NullableStr
    created_at: str
    finished_at: NullableStr
    counts: BatchCounts
    webhook: WebhookState | None
    items: list[PublicBatchItem]


class ImagePage(Shape):
    images: list[PublicImage]
    next: NullableStr = Field(description="The cursor for the next page: pass it as 'before'")


class ModelList(Shape):
    models: list[PublicModel]


class TemplateList(Shape):
    templates: list[PublicTemplate]


class Uploaded(Shape):
    id: str
    url: str
    image: PublicImage


class BatchAccepted(Shape):
    id: str
    status: Literal["running", "done"]
    status_url: str
    items: int


class Health(Shape):
    status: Literal["ok", "degraded", "stopping"]
    checks: dict[str, str]


def public_model(spec: ModelSpec) -> PublicModel:
    cost = spec.default_cost()
    return PublicModel(
        id=spec.id,
        name=spec.name,
        capabilities=sorted(spec.capabilities),
        cost_per_image=usd(cost.micro_usd),
        cost_per_image_micro_usd=cost.micro_usd,
        neurons_per_image=cost.milli_neurons / 1000,
        price_published=spec.price_published,
        price_source=spec.price_source,
        price_note=spec.price_note or None,
        default_width=spec.default_width,
        default_height=spec.default_height,
        sizes="fixed" if spec.fixed_size else (spec.min_side, spec.max_side),
        steps=(spec.min_steps, spec.max_steps, spec.default_steps),
        speed_seconds=spec.typical_seconds,
        description=spec.description,
    )


def model_json(spec: ModelSpec) -> dict[str, Any]:
    return public_model(spec).to_json()


def usage_totals(report: UsageReport) -> dict[str, Any]:
    """The fields of a usage report, to build a UsageTotals or one of its extensions."""
    return {
        "start_day": report.start_day,
        "end_day": report.end_day,
        "total_images": report.total_images,
        "total_cost": usd(report.total_micro_usd),
        "total_cost_micro_usd": report.total_micro_usd,
        "total_neurons": report.total_milli_neurons / 1000,
        "average_cost": usd(report.average_micro_usd),
        "users": [
            UserUsage(user_id=u.user_id, images=u.images, cost=usd(u.micro_usd),
                      cost_micro_usd=u.micro_usd)
            for u in report.users
        ],
        "by_model": {m: Usage(images=i, cost=usd(c)) for m, (i, c) in report.by_model.items()},
        "by_day": {d: Usage(images=i, cost=usd(c)) for d, (i, c) in report.by_day.items()},
    }  # fmt: skip


def report_json(report: UsageReport) -> dict[str, Any]:
    """Totals, per user, per model and per day of a usage report."""
    return UsageTotals(**usage_totals(report)).to_json()


def public_image(image: ImageRecord) -> PublicImage:
    """The image record as fronts show it (HTTP API, CLI --json, webhooks); cost in USD."""
    return PublicImage(
        id=image.id,
        kind=image.kind,  # type: ignore[arg-type]
        prompt=image.prompt,
        prompt_used=image.prompt_used,
        negative_prompt=image.negative_prompt,
        model=image.model,
        storage_key=image.storage_key,
        url=image.url,
        width=image.width,
        height=image.height,
        steps=image.steps,
        seed=image.seed,
        created_at=image.created_at,
        user_id=image.user_id,
        guild_id=image.guild_id or None,
        cost=usd(image.cost_micro_usd),
        cost_micro_usd=image.cost_micro_usd,
        cached=image.cached,
        is_deleted=image.is_deleted,
        source_image_id=image.source_image_id,
        metadata=image.metadata,
    )


def image_to_public(image: ImageRecord) -> dict[str, Any]:
    return public_image(image).to_json()


def public_template(template: Template) -> PublicTemplate:
    return PublicTemplate.model_validate(template, from_attributes=True)  # the same names


def public_batch(batch: Batch, images: dict[str, ImageRecord]) -> PublicBatch:
    """The batch as the API shows it (and as the webhook receives it)."""
    counts = {state: 0 for state in ("queued", "running", "done", "failed")}
    for item in batch.items:
        counts[item.state] += 1
    webhook = (
        WebhookState(state=batch.webhook_state, attempts=batch.webhook_attempts)  # type: ignore[arg-type]
        if batch.webhook_url
        else None
    )
    items = [
        PublicBatchItem(
            position=item.position,
            prompt=item.prompt,
            status=item.state,  # type: ignore[arg-type]
            image=public_image(images[item.image_id]) if item.image_id in images else None,
            error=ItemError(code=item.error_code, message=item.error_message)
            if item.state == "failed"
            else None,
        )
        for item in batch.items
    ]
    return PublicBatch(
        id=batch.id,
        status=batch.state,  # type: ignore[arg-type]
        model=batch.model,
        created_at=batch.created_at,
        finished_at=batch.finished_at,
        counts=BatchCounts(**counts),
        webhook=webhook,
        items=items,
    )
