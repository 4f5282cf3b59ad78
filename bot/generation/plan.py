"""Planning a generation: a request checked and resolved into everything a provider call and a
record need (template, model, prompt, blocklist, size, steps, starting image, cache scope,
price), then split into slots, one per image, each with its seed and cache key."""

from __future__ import annotations

import asyncio
import hashlib
import json
import secrets
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from bot import imaging
from bot.catalog import IMAGE_TO_IMAGE, Catalog, Cost, ModelSpec
from bot.errors import InvalidModel, InvalidRequest
from bot.ledger import ImageRecord, Ledger, Limits, Usage
from bot.requests import GenerateRequest
from bot.server_admin import PromptBlocked, prompt_matches, template_scope
from bot.validation import (
    clean_negative,
    clean_prompt,
    resolve_count,
    resolve_guidance,
    resolve_seed,
    resolve_size,
    resolve_steps,
    resolve_strength,
)

PREFERRED_IMAGE_TO_IMAGE = (
    "@cf/black-forest-labs/flux-2-klein-4b",
    "@cf/runwayml/stable-diffusion-v1-5-img2img",
)

# How the planner reaches the image library for a starting image: the user's upload of new
# bytes, or an image they may see and its bytes.
UploadStart = Callable[[GenerateRequest], Awaitable[ImageRecord]]
VisibleStart = Callable[[GenerateRequest], Awaitable[tuple[ImageRecord, bytes]]]


@dataclass(frozen=True)
class Plan:
    """A validated request: everything a provider call and a record need."""

    spec: ModelSpec
    prompt: str
    negative_prompt: str | None
    width: int
    height: int
    steps: int
    guidance: float | None
    strength: float | None
    seed: int | None
    count: int
    init_image: bytes | None
    source_image_id: str | None
    cache_scope: str | None
    unit_cost: Cost
    limits: Limits  # read once while planning, checked again atomically by the reservation
    usage: Usage  # the user's usage when the policy was read
    adult_content: str = "off"  # the server's content rule (bot.ledger.servers)

    def cost_of(self, images: int) -> Cost:
        unit = self.unit_cost
        return Cost(unit.micro_usd * images, unit.milli_neurons * images)


@dataclass(frozen=True)
class Slot:
    """One image of a request: its seed and its cache key."""

    index: int
    seed: int
    cache_key: str


class Planner:
    def __init__(
        self,
        ledger: Ledger,
        catalog: Catalog,
        *,
        default_model: str,
        cache_scope: str,
        upload_start: UploadStart,
        visible_start: VisibleStart,
    ) -> None:
        self.ledger = ledger
        self.catalog = catalog
        self.default_model = default_model
        self.cache_scope = cache_scope
        self._upload_start = upload_start
        self._visible_start = visible_start

    async def plan(self, request: GenerateRequest) -> Plan:
        prompt_text = request.prompt
        template_aspect = None
        model_id = request.model
        negative = request.negative_prompt
        aspect = request.aspect_ratio
        steps = request.steps
        if request.template:
            template = await self.ledger.get_template(
                template_scope(request.guild_id, request.user_id), request.template
            )
            prompt_text = template.apply(clean_prompt(prompt_text, 100_000))
            model_id = model_id or template.model
            negative = negative if negative is not None else template.negative_prompt
            template_aspect = template.aspect_ratio
            steps = steps if steps is not None else template.steps
        has_image = request.image_id is not None or request.init_image is not None
        spec = self.choose_model(model_id, has_image)
        prompt = clean_prompt(prompt_text, spec.max_prompt_chars)
        if aspect is None and not spec.fixed_size:  # a template's shape is only a default
            aspect = template_aspect
        policy = await self.ledger.policy(request.user_id, request.guild_id, request.role_ids)
        if policy.blocklist and prompt_matches(f"{prompt} {request.prompt}", policy.blocklist):
            raise PromptBlocked()
        width, height = resolve_size(spec, request.width, request.height, aspect)
        resolved_steps = resolve_steps(spec, steps)
        init_image, source_id, input_size = None, None, None
        if has_image:
            init_image, source_id, input_size = await self._init_image(request, spec, width, height)
        return Plan(
            spec=spec,
            prompt=prompt,
            negative_prompt=clean_negative(negative, spec),
            width=width,
            height=height,
            steps=resolved_steps,
            guidance=resolve_guidance(spec, request.guidance),
            strength=resolve_strength(spec, request.strength, has_image),
            seed=resolve_seed(request.seed),
            count=resolve_count(request.count),
            init_image=init_image,
            source_image_id=source_id,
            cache_scope=self._cache_scope(request),
            unit_cost=spec.image_cost(width, height, resolved_steps, input_size),
            limits=policy.limits,
            usage=policy.usage,
            adult_content=policy.adult_content,
        )

    def choose_model(self, model_id: str | None, has_image: bool) -> ModelSpec:
        if model_id:
            spec = self.catalog.get(model_id)
            if spec.is_text_model:
                raise InvalidModel(model_id, f"{spec.name} is a text model, not an image model.")
            if has_image and not spec.image_to_image:
                raise InvalidRequest(
                    "model", f"{spec.name} cannot start from an image; pick an image-to-image "
                    "model (see /models).",
                )  # fmt: skip
            if not has_image and not spec.text_to_image:
                raise InvalidRequest("image", f"{spec.name} needs a starting image.")
            return spec
        if not has_image:
            return self.catalog.get(self.default_model)
        enabled = self.catalog.enabled_image_models()
        for preferred in PREFERRED_IMAGE_TO_IMAGE:
            for spec in enabled:
                if spec.id == preferred:
                    return spec
        for spec in enabled:
            if IMAGE_TO_IMAGE in spec.capabilities:
                return spec
        raise InvalidRequest("image", "No image-to-image model is enabled on this bot.")

    async def _init_image(
        self, request: GenerateRequest, spec: ModelSpec, width: int, height: int
    ) -> tuple[bytes, str, tuple[int, int]]:
        """The starting image, fitted to what the model accepts, and the image it came from."""
        if request.init_image is not None:
            source = await self._upload_start(request)
            data = request.init_image
        else:
            source, data = await self._visible_start(request)
        if spec.max_input_side:
            side = spec.max_input_side
            variant = imaging.parse_variant(f"w={side},h={side},fit=scale-down")
        else:
            variant = imaging.parse_variant(f"w={width},h={height},fit=cover")
        fitted, _ = await asyncio.to_thread(imaging.render_variant, data, variant)
        size = await asyncio.to_thread(imaging.image_size, fitted)
        return fitted, source.id, size

    def _cache_scope(self, request: GenerateRequest) -> str | None:
        """Who may share this request's images (the cache and single-flight both key on it)."""
        if self.cache_scope == "off":
            return None
        if request.private:  # only ever shared with the requester themselves
            return f"private:{request.user_id}"
        if self.cache_scope == "global":
            return "*"
        return f"guild:{request.guild_id}" if request.guild_id else f"user:{request.user_id}"


def slot_of(plan: Plan, index: int) -> Slot:
    """Seed and cache key of image ``index``: a given seed counts up; no seed means any."""
    seed_part: str
    if plan.seed is not None:
        seed = (plan.seed + index) % 2**32
        seed_part = str(seed)
    else:
        seed = secrets.randbelow(2**32)
        seed_part = f"any{index}"
    key_parts = {
        "model": plan.spec.id,
        "prompt": plan.prompt.casefold(),
        "negative": (plan.negative_prompt or "").casefold(),
        "size": [plan.width, plan.height],
        "steps": plan.steps,
        "seed": seed_part,
        "guidance": plan.guidance,
        "strength": plan.strength,
        "init": hashlib.sha256(plan.init_image).hexdigest() if plan.init_image else None,
    }
    digest = hashlib.sha256(json.dumps(key_parts, sort_keys=True).encode()).hexdigest()
    return Slot(index=index, seed=seed, cache_key=digest)
