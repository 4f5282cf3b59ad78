"""The one generation/storage service every front calls: Discord cogs, the CLI, the HTTP API.

``generate`` reads top to bottom: replay a known request → validate → look in the cache →
enhance → reserve → wait for a slot → generate → store → record and settle (or refund).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import secrets
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Any

from bot import enhance, imaging
from bot.catalog import IMAGE_TO_IMAGE, ZERO_COST, Catalog, Cost, ModelSpec
from bot.deletion import ImageDeletion
from bot.errors import (
    BotError,
    Busy,
    InvalidModel,
    InvalidRequest,
    NotFound,
    ProviderError,
    ProviderUnavailable,
)
from bot.idempotency import check_same_request, request_fingerprint, upload_fingerprint
from bot.ledger import ImageRecord, Job, Ledger, Limits, Usage, UsageReport
from bot.ledger.ledger import DuplicateRequest, NewJob
from bot.ledger.records import new_id, next_utc_midnight
from bot.presentation import shows_fresh_urls
from bot.providers.base import GeneratedImage, ImageProvider, ImageRequest
from bot.recovery import CrashRecovery, RecoveryReport
from bot.reports import PersonalUsage, ServerUsage, personal_usage, server_usage
from bot.requests import GenerateRequest, GenerationResult, Progress, Remaining
from bot.scheduler import JobScheduler
from bot.server_admin import PromptBlocked, prompt_matches, template_scope
from bot.stores.base import ImageStore, store_metadata
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

log = logging.getLogger(__name__)

UNLIMITED = Limits(2**62, 2**62, 2**62, 2**62)
PREFERRED_IMAGE_TO_IMAGE = (
    "@cf/black-forest-labs/flux-2-klein-4b",
    "@cf/runwayml/stable-diffusion-v1-5-img2img",
)


@dataclass(frozen=True)
class _Plan:
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


@dataclass(frozen=True)
class _Slot:
    """One image of a request: its seed and its cache key."""

    index: int
    seed: int
    cache_key: str


class ImageService:
    def __init__(
        self,
        *,
        ledger: Ledger,
        provider: ImageProvider,
        store: ImageStore,
        catalog: Catalog,
        scheduler: JobScheduler,
        default_model: str,
        enhance_model: str,
        cache_scope: str = "guild",
        upload_micro_usd: int = 0,
    ) -> None:
        self.ledger = ledger
        self.provider = provider
        self.store = store
        self.catalog = catalog
        self.scheduler = scheduler
        self.default_model = default_model
        self.enhance_model = enhance_model
        self.cache_scope = cache_scope
        self.upload_micro_usd = upload_micro_usd  # what the store charges to keep one upload
        self._inflight: dict[tuple[str, str], asyncio.Future[ImageRecord]] = {}
        self._by_key: dict[str, asyncio.Future[None]] = {}
        self._active: set[asyncio.Task[Any]] = set()
        self._deletion = ImageDeletion(ledger, store)
        self.closing = False

    # -- generation -----------------------------------------------------------------------

    @shows_fresh_urls
    async def generate(self, request: GenerateRequest) -> GenerationResult:
        if self.closing:
            raise Busy("The bot is restarting; try again in a moment.")
        task = asyncio.current_task()
        if task is not None:
            self._active.add(task)
        try:
            return await self._generate(request)
        finally:
            if task is not None:
                self._active.discard(task)

    async def drain(self, grace_seconds: float) -> int:
        """Refuse new work, let running jobs finish for up to ``grace_seconds``, then cancel
        the rest (each cancelled job refunds itself). Returns how many were cancelled."""
        self.closing = True
        active = {t for t in self._active if t is not asyncio.current_task()}
        if not active:
            return 0
        _, pending = await asyncio.wait(active, timeout=grace_seconds)
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
        return len(pending)

    async def _generate(self, request: GenerateRequest) -> GenerationResult:
        if request.idempotency_key:
            replayed = await self._replay(request)
            if replayed is not None:
                return replayed
        plan = await self._plan(request)
        slots = [self._slot(plan, i) for i in range(plan.count)]
        hits = await self._cached(plan, slots, request.fresh)
        joined = {
            s.index: self._inflight[(s.cache_key, plan.cache_scope)]
            for s in slots
            if s.index not in hits
            and plan.cache_scope
            and (s.cache_key, plan.cache_scope) in self._inflight
        }
        own = [s for s in slots if s.index not in hits and s.index not in joined]
        if not own:
            for index, future in joined.items():
                hits[index] = await future
            return await self._free_result(request, plan, slots, hits)
        # Claimed with no await since the cache check, so an identical request arriving now
        # joins this one instead of generating again.
        futures = self._claim(plan, own)
        try:
            return await self._paid_result(request, plan, own, hits, joined, futures)
        except BaseException as exc:
            self._fail(futures, exc)
            raise
        finally:
            self._release(plan, own, futures)

    async def _paid_result(
        self,
        request: GenerateRequest,
        plan: _Plan,
        own: list[_Slot],
        hits: dict[int, ImageRecord],
        joined: dict[int, asyncio.Future[ImageRecord]],
        futures: dict[int, asyncio.Future[ImageRecord]],
    ) -> GenerationResult:
        prompt_used, enhance_cost, enhance_job = plan.prompt, ZERO_COST, None
        if request.enhance:
            prompt_used, enhance_cost, enhance_job = await self._enhance(request, plan)
        try:
            job = await self._reserve(request, plan, own, prompt_used)
        except DuplicateRequest:
            replayed = await self._replay(request)
            assert replayed is not None
            return replayed
        except BaseException:
            if enhance_job is not None:  # no image, so the enhancement is not charged either
                await self.ledger.refund(enhance_job, "not_used")
            raise
        done = asyncio.get_running_loop().create_future()
        if request.idempotency_key:
            self._by_key[request.idempotency_key] = done
        try:
            produced, failures = await self._run_job(request, plan, job, own, prompt_used)
            for slot in own:
                if slot.index in produced:
                    futures[slot.index].set_result(produced[slot.index])
            for index, future in joined.items():
                try:
                    hits[index] = await future
                except BotError as exc:
                    failures.append(exc)
        finally:
            done.set_result(None)
            if request.idempotency_key:
                self._by_key.pop(request.idempotency_key, None)
        hit_records = self._hit_records(request, hits, job.id)
        await asyncio.gather(*(self.ledger.add_image(r) for r in hit_records.values()))
        merged = {**produced, **hit_records}
        return GenerationResult(
            images=[merged[index] for index in sorted(merged)],
            prompt=plan.prompt,
            prompt_used=prompt_used,
            enhanced=request.enhance,
            cost=self._sum_cost(produced.values()) + enhance_cost,
            remaining=await self.remaining(request.user_id, request.guild_id),
            job_id=job.id,
            failed=len(failures),
        )

    async def _run_job(
        self,
        request: GenerateRequest,
        plan: _Plan,
        job: Job,
        own: list[_Slot],
        prompt_used: str,
    ) -> tuple[dict[int, ImageRecord], list[BotError]]:
        """Generate, store and record each own image; settle for what was made, else refund."""
        produced: dict[int, ImageRecord] = {}
        failures: list[BotError] = []
        try:
            position_callback = self._position_reporter(request)
            async with self.scheduler.slot(request.user_id, position_callback):
                self._report(request, "generating", plan.spec)
                generated = await asyncio.gather(
                    *(self._generate_one(plan, slot, prompt_used) for slot in own),
                    return_exceptions=True,
                )
                image_ids = job.params["slots"]
                await self.ledger.set_state(job.id, "storing", [entry["id"] for entry in image_ids])
                self._report(request, "storing", plan.spec)
                stored = await asyncio.gather(
                    *(
                        self._store_one(request, plan, job, slot, image_id["id"], result,
                                        prompt_used)
                        for slot, image_id, result in zip(own, image_ids, generated, strict=True)
                    ),
                    return_exceptions=True,
                )  # fmt: skip
            for slot, outcome in zip(own, stored, strict=True):
                if isinstance(outcome, ImageRecord):
                    produced[slot.index] = outcome
                elif isinstance(outcome, BotError):
                    failures.append(outcome)
                elif isinstance(outcome, BaseException):
                    raise outcome
        except BaseException as exc:
            if not produced:
                error = exc if isinstance(exc, BotError) else None
                await self.ledger.refund(
                    job.id,
                    error.code if error else "internal",
                    error.user_message if error else None,
                )
            else:
                await self._settle(job, plan, len(produced))
            raise
        if not produced:
            first = failures[0]
            await self.ledger.refund(job.id, first.code, first.user_message)
            raise first
        await self._settle(job, plan, len(produced))
        self._report(request, "done", plan.spec)
        return produced, failures

    async def _generate_one(self, plan: _Plan, slot: _Slot, prompt_used: str) -> GeneratedImage:
        return await self.provider.generate(
            ImageRequest(
                model=plan.spec,
                prompt=prompt_used,
                width=plan.width,
                height=plan.height,
                steps=plan.steps,
                seed=slot.seed,
                negative_prompt=plan.negative_prompt,
                guidance=plan.guidance,
                strength=plan.strength,
                init_image=plan.init_image,
            )
        )

    async def _store_one(
        self,
        request: GenerateRequest,
        plan: _Plan,
        job: Job,
        slot: _Slot,
        image_id: str,
        generated: GeneratedImage | BaseException,
        prompt_used: str,
    ) -> ImageRecord:
        if isinstance(generated, BaseException):
            raise generated
        width, height = imaging.image_size(generated.data)  # header only: microseconds
        stored = await self.store.put(
            image_id,
            generated.data,
            generated.content_type,
            self._store_metadata(image_id, request.user_id, request.guild_id, plan.spec.id,
                                 plan.prompt, request.metadata),
        )  # fmt: skip
        record = ImageRecord(
            id=image_id,
            kind="generated",
            job_id=job.id,
            user_id=request.user_id,
            guild_id=request.guild_id,
            prompt=plan.prompt,
            prompt_used=prompt_used,
            negative_prompt=plan.negative_prompt,
            model=plan.spec.id,
            width=width,
            height=height,
            steps=plan.steps,
            seed=slot.seed if plan.spec.supports_seed or self.provider.name == "local" else None,
            guidance=plan.guidance,
            strength=plan.strength,
            source_image_id=plan.source_image_id,
            store=self.store.name,
            storage_key=stored.key,
            url=stored.url,
            content_type=generated.content_type,
            bytes=len(generated.data),
            cost_micro_usd=plan.unit_cost.micro_usd,
            cost_milli_neurons=plan.unit_cost.milli_neurons,
            cache_key=slot.cache_key if plan.cache_scope else None,
            cache_scope=plan.cache_scope,
            metadata=dict(request.metadata),
            created_at=self.ledger.now_iso(),
        )
        await self._record_or_unstore(record)
        return record

    async def _record_or_unstore(self, record: ImageRecord) -> None:
        """Record a stored image; if the record cannot be written, take the bytes back out of
        the store, so nothing stored is ever left without a record."""
        try:
            await self.ledger.add_image(record)
        except BaseException:
            try:
                await self.store.delete(record.storage_key)
            except Exception:  # crash recovery finds it through the job's planned ids
                log.warning("could not remove unrecorded image %s from the store", record.id)
            raise

    async def _settle(self, job: Job, plan: _Plan, made: int) -> None:
        unit = plan.unit_cost
        await self.ledger.settle(
            job.id, made, Cost(unit.micro_usd * made, unit.milli_neurons * made)
        )

    # -- validation and planning ------------------------------------------------------------

    async def _plan(self, request: GenerateRequest) -> _Plan:
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
        spec = self._choose_model(model_id, has_image)
        prompt = clean_prompt(prompt_text, spec.max_prompt_chars)
        if aspect is None and not spec.fixed_size:  # a template's shape is only a default
            aspect = template_aspect
        policy = await self.ledger.policy(request.user_id, request.guild_id)
        if policy.blocklist and prompt_matches(f"{prompt} {request.prompt}", policy.blocklist):
            raise PromptBlocked()
        width, height = resolve_size(spec, request.width, request.height, aspect)
        resolved_steps = resolve_steps(spec, steps)
        init_image, source_id, input_size = None, None, None
        if has_image:
            init_image, source_id, input_size = await self._init_image(request, spec, width, height)
        return _Plan(
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
        )

    def _choose_model(self, model_id: str | None, has_image: bool) -> ModelSpec:
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
            key = f"{request.idempotency_key}:init" if request.idempotency_key else None
            source = await self.upload(
                request.init_image,
                user_id=request.user_id,
                guild_id=request.guild_id,
                idempotency_key=key,
            )
            data = request.init_image
        else:
            assert request.image_id is not None
            source = await self.visible_image(request.image_id, request.user_id, request.guild_id)
            data = await self.store.get(source.storage_key)
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

    def _slot(self, plan: _Plan, index: int) -> _Slot:
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
        return _Slot(index=index, seed=seed, cache_key=digest)

    # -- the cache and single-flight ----------------------------------------------------------

    async def _cached(self, plan: _Plan, slots: list[_Slot], fresh: bool) -> dict[int, ImageRecord]:
        if fresh or plan.cache_scope is None:
            return {}
        found = {}
        for slot in slots:
            hit = await self.ledger.find_cached(slot.cache_key, plan.cache_scope)
            if hit is not None:
                found[slot.index] = hit
        return found

    def _claim(self, plan: _Plan, own: list[_Slot]) -> dict[int, asyncio.Future[ImageRecord]]:
        loop = asyncio.get_running_loop()
        futures: dict[int, asyncio.Future[ImageRecord]] = {}
        for slot in own:
            future: asyncio.Future[ImageRecord] = loop.create_future()
            futures[slot.index] = future
            if plan.cache_scope:
                self._inflight.setdefault((slot.cache_key, plan.cache_scope), future)
        return futures

    @staticmethod
    def _fail(futures: dict[int, asyncio.Future[ImageRecord]], exc: BaseException) -> None:
        error = (
            exc
            if isinstance(exc, BotError)
            else ProviderUnavailable("The earlier identical request did not finish.")
        )
        for future in futures.values():
            if not future.done():
                future.set_exception(error)
                future.exception()  # joiners may not exist: mark it retrieved

    def _release(
        self, plan: _Plan, own: list[_Slot], futures: dict[int, asyncio.Future[ImageRecord]]
    ) -> None:
        self._fail(futures, ProviderUnavailable("The image was not produced."))
        for slot in own:
            key = (slot.cache_key, plan.cache_scope or "")
            if self._inflight.get(key) is futures[slot.index]:
                del self._inflight[key]

    def _hit_records(
        self,
        request: GenerateRequest,
        hits: dict[int, ImageRecord],
        job_id: str,
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
                metadata=dict(request.metadata),
                created_at=self.ledger.now_iso(),
            )
            for index, source in sorted(hits.items())
        }

    async def _free_result(
        self,
        request: GenerateRequest,
        plan: _Plan,
        slots: list[_Slot],
        hits: dict[int, ImageRecord],
    ) -> GenerationResult:
        ids = {slot.index: new_id("img") for slot in slots}
        job_id = new_id("job")
        records = self._hit_records(request, hits, job_id, ids)
        try:
            job = await self.ledger.record_free_job(
                self._new_job(request, plan, [], plan.prompt, images=0, cost=ZERO_COST),
                job_id,
                [records[s.index] for s in slots],
            )
        except DuplicateRequest as duplicate:
            check_same_request(duplicate.job, request_fingerprint(request))
            return await self._result_of(duplicate.job, request.guild_id, replayed=True)
        self._report(request, "done", plan.spec)
        images = [records[index] for index in sorted(records)]
        return GenerationResult(
            images=images,
            prompt=plan.prompt,
            prompt_used=images[0].prompt_used or plan.prompt,
            enhanced=False,
            cost=ZERO_COST,
            remaining=Remaining(  # a free hit changes nothing since the policy was read
                images=max(0, plan.limits.user_images - plan.usage.images),
                micro_usd=max(0, plan.limits.user_micro_usd - plan.usage.micro_usd),
                resets_at=next_utc_midnight(self.ledger.clock()),
            ),
            job_id=job.id,
        )

    # -- reservations, idempotency, enhancement -----------------------------------------------

    def _new_job(
        self,
        request: GenerateRequest,
        plan: _Plan,
        own: list[_Slot],
        prompt_used: str,
        *,
        images: int,
        cost: Cost,
    ) -> NewJob:
        return NewJob(
            kind="generate",
            user_id=request.user_id,
            guild_id=request.guild_id,
            cost=cost,
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
                "slots": [
                    {"id": new_id("img"), "seed": s.seed, "cache_key": s.cache_key} for s in own
                ],
            },
        )

    async def _reserve(
        self, request: GenerateRequest, plan: _Plan, own: list[_Slot], prompt_used: str
    ) -> Job:
        unit = plan.unit_cost
        new = self._new_job(
            request,
            plan,
            own,
            prompt_used,
            images=len(own),
            cost=Cost(unit.micro_usd * len(own), unit.milli_neurons * len(own)),
        )
        return await self.ledger.reserve(new, plan.limits, hold=request.allowance_hold)

    async def _replay(self, request: GenerateRequest) -> GenerationResult | None:
        """The first result of a request seen before; waits if it is still running.
        IdempotencyKeyReused if the key was first used for a different request."""
        key = request.idempotency_key
        assert key is not None
        job = await self.ledger.job_by_key(key)
        if job is not None:
            check_same_request(job, request_fingerprint(request))
        waiting = self._by_key.get(key)
        if waiting is not None:
            await asyncio.shield(waiting)
            job = await self.ledger.job_by_key(key)
        for _ in range(600):
            if job is None or not job.is_open:
                break
            await asyncio.sleep(0.5)  # running in another process: poll, bounded
            job = await self.ledger.job_by_key(key)
        if job is None:
            return None
        return await self._result_of(job, request.guild_id, replayed=True)

    async def _result_of(self, job: Job, guild_id: str, *, replayed: bool) -> GenerationResult:
        if job.state == "refunded":
            error = BotError(job.error_message or "That request failed.")
            error.code = job.error_code or "error"
            raise error
        records = await self.ledger.images_for_job(job.id)
        params = job.params
        return GenerationResult(
            images=records,
            prompt=str(params.get("prompt", "")),
            prompt_used=str(params.get("prompt_used", params.get("prompt", ""))),
            enhanced=params.get("prompt_used") != params.get("prompt"),
            cost=Cost(job.micro_usd, job.milli_neurons),
            remaining=await self.remaining(job.user_id, guild_id),
            job_id=job.id,
            replayed=replayed,
        )

    async def _enhance(self, request: GenerateRequest, plan: _Plan) -> tuple[str, Cost, str | None]:
        """Rewrite the prompt with a text model, charged like any call; on any failure the
        original prompt is used and the reservation refunded."""
        try:
            spec = self.catalog.get(self.enhance_model)
        except InvalidModel:
            return plan.prompt, ZERO_COST, None
        estimate_tokens = len(enhance.SYSTEM_PROMPT) // 3 + len(plan.prompt) // 2 + 16
        estimate = Cost.from_nano_usd(
            spec.price.tokens_nano_usd(estimate_tokens, enhance.MAX_TOKENS)
        )
        key = f"{request.idempotency_key}:enhance" if request.idempotency_key else None
        try:
            job = await self.ledger.reserve(
                NewJob("enhance", request.user_id, request.guild_id, estimate, 0, spec.id, key),
                plan.limits,
            )
        except DuplicateRequest:
            return plan.prompt, ZERO_COST, None
        try:
            answer = await self.provider.complete(
                spec, enhance.SYSTEM_PROMPT, plan.prompt, max_tokens=enhance.MAX_TOKENS
            )
        except ProviderError as exc:
            log.info("prompt enhancement failed (%s); using the original prompt", exc.code)
            await self.ledger.refund(job.id, exc.code, exc.user_message)
            return plan.prompt, ZERO_COST, None
        except BaseException:
            await self.ledger.refund(job.id, "cancelled")
            raise
        actual = Cost.from_nano_usd(
            spec.price.tokens_nano_usd(answer.input_tokens, answer.output_tokens)
        )
        actual = Cost(min(actual.micro_usd, estimate.micro_usd),
                      min(actual.milli_neurons, estimate.milli_neurons))  # fmt: skip
        await self.ledger.settle(job.id, 0, actual)
        text = enhance.tidy_answer(answer.text, plan.prompt, plan.spec.max_prompt_chars)
        return text, actual, job.id

    # -- delivery -----------------------------------------------------------------------------

    async def record_delivery(self, job_id: str, way: str) -> None:
        """Note how a result reached its user (``DELIVERY_WAYS``): shown in Details."""
        await self.ledger.set_delivery(job_id, way)

    async def refund_undelivered(self, job_id: str) -> int:
        """A result no way could show is not charged: its job (and the prompt enhancement
        made for it) refunded with reason ``undelivered``; its images stay in the owner's
        list. Returns the micro-dollars given back (0 if nothing was settled)."""
        job = await self.ledger.get_job(job_id)
        jobs = [job] if job is not None else []
        if job is not None and job.idempotency_key:
            enhancement = await self.ledger.job_by_key(f"{job.idempotency_key}:enhance")
            jobs += [enhancement] if enhancement is not None else []
        refunded = 0
        for each in jobs:
            if await self.ledger.refund_undelivered(each.id):
                refunded += each.micro_usd
        return refunded

    async def delivery_of(self, job_id: str | None) -> str | None:
        job = await self.ledger.get_job(job_id) if job_id else None
        return job.delivery if job is not None else None

    # -- uploads ------------------------------------------------------------------------------

    @shows_fresh_urls
    async def upload(
        self,
        data: bytes,
        *,
        user_id: str,
        guild_id: str = "",
        idempotency_key: str | None = None,
        metadata: dict[str, str] | None = None,
    ) -> ImageRecord:
        """Validate (magic bytes and a real decode), reserve it against the user's daily upload
        allowance (and its storage price), host and record an image."""
        fingerprint = upload_fingerprint(data, user_id, guild_id)
        if idempotency_key:
            previous = await self.ledger.job_by_key(idempotency_key)
            if previous is not None:
                check_same_request(previous, fingerprint)
                if previous.state == "settled":
                    return (await self.ledger.images_for_job(previous.id))[0]
        info = await asyncio.to_thread(imaging.validate_upload, data)
        image_id = new_id("img")
        price = Cost(self.upload_micro_usd, 0)
        try:
            job = await self.ledger.reserve(
                NewJob("upload", user_id, guild_id, price, 0, None, idempotency_key,
                       {"slots": [{"id": image_id}], "metadata": metadata or {}},
                       fingerprint=fingerprint, bytes=len(data)),
                await self._upload_limits(user_id, guild_id),
            )  # fmt: skip
        except DuplicateRequest as duplicate:
            check_same_request(duplicate.job, fingerprint)
            return (await self.ledger.images_for_job(duplicate.job.id))[0]
        try:
            await self.ledger.set_state(job.id, "storing", [image_id])
            stored = await self.store.put(
                image_id, data, info.content_type,
                self._store_metadata(image_id, user_id, guild_id, None, None),
            )  # fmt: skip
            record = ImageRecord(
                id=image_id,
                kind="upload",
                job_id=job.id,
                user_id=user_id,
                guild_id=guild_id,
                width=info.width,
                height=info.height,
                store=self.store.name,
                storage_key=stored.key,
                url=stored.url,
                content_type=info.content_type,
                bytes=len(data),
                cost_micro_usd=price.micro_usd,
                metadata=dict(metadata or {}),
                created_at=self.ledger.now_iso(),
            )
            await self._record_or_unstore(record)
        except BaseException as exc:
            code = exc.code if isinstance(exc, BotError) else "internal"
            await self.ledger.refund(job.id, code)
            raise
        await self.ledger.settle(job.id, 0, price)
        return record

    async def check_upload_allowance(self, user_id: str, guild_id: str = "") -> None:
        """Refuse early (QuotaExceeded) when not even a tiny upload would fit today, so a
        front need not read or fetch a file it cannot accept. ``upload`` checks exactly."""
        limits = await self._upload_limits(user_id, guild_id)
        refusal = await self.ledger.upload_refusal(user_id, limits, 1)
        if refusal is not None:
            raise refusal

    async def _upload_limits(self, user_id: str, guild_id: str) -> Limits:
        """The user's upload allowance and money budgets; uploads draw no images or Neurons."""
        limits = await self.ledger.limits_for(user_id, guild_id)
        return replace(limits, user_images=UNLIMITED.user_images,
                       milli_neurons=UNLIMITED.milli_neurons)  # fmt: skip

    # -- images -------------------------------------------------------------------------------

    @shows_fresh_urls
    async def get_image(self, image_id: str) -> ImageRecord:
        """A live image; NotFound when it does not exist or was deleted."""
        image = await self.ledger.get_image(image_id)
        if image.is_deleted:
            raise NotFound("That image was deleted.")
        return image

    @shows_fresh_urls
    async def user_images(
        self, user_id: str, prefix: str = "", limit: int = 25
    ) -> list[ImageRecord]:
        """A user's live images and uploads, newest first (for pickers and listings)."""
        return await self.ledger.list_images(user_id, limit=limit, prefix=prefix)

    @shows_fresh_urls
    async def user_images_page(
        self, user_id: str, *, limit: int, before: str | None
    ) -> list[ImageRecord]:
        """A page of a user's live images, newest first; ``before`` is the last created_at."""
        return await self.ledger.list_images(user_id, limit=limit, before=before)

    async def personal_usage(self, guild_id: str, user_id: str) -> PersonalUsage:
        return await personal_usage(self.ledger, guild_id, user_id)

    async def server_usage(self, guild_id: str, days: int = 30) -> ServerUsage:
        return await server_usage(self.ledger, guild_id, days)

    @shows_fresh_urls
    async def visible_image(self, image_id: str, user_id: str, guild_id: str) -> ImageRecord:
        """An image this user may use: their own, or one made in the same server."""
        image = await self.ledger.get_image(image_id)
        mine = image.user_id == user_id
        same_guild = bool(guild_id) and image.guild_id == guild_id
        if image.is_deleted or not (mine or same_guild):
            raise NotFound(f"No image with id {image_id}.")
        return image

    @shows_fresh_urls
    async def delete_image(
        self, image_id: str, *, requester_id: str, is_admin: bool = False
    ) -> ImageRecord:
        """Take the image down: its URL dies; cache hits sharing its bytes keep a copy of their
        own, unless an admin removes someone else's image (moderation: every copy goes)."""
        return await self._deletion.delete(image_id, requester_id=requester_id, is_admin=is_admin)

    # -- quotas and reports --------------------------------------------------------------------

    def today(self) -> str:
        """The current UTC day (the day quotas and reports count)."""
        return self.ledger.today()

    async def remaining(self, user_id: str, guild_id: str) -> Remaining:
        limits, used = await self.ledger.limits_and_usage(user_id, guild_id)
        return Remaining(
            images=max(0, limits.user_images - used.images),
            micro_usd=max(0, limits.user_micro_usd - used.micro_usd),
            resets_at=next_utc_midnight(self.ledger.clock()),
        )

    async def usage_report(
        self,
        start_day: str,
        end_day: str | None = None,
        *,
        guild_id: str | None = None,
        user_id: str | None = None,
    ) -> UsageReport:
        """Settled charges between two UTC days, optionally for one server and/or user."""
        return await self.ledger.report(
            start_day, end_day or start_day, guild_id=guild_id, user_id=user_id
        )

    def models(self) -> list[ModelSpec]:
        return self.catalog.enabled_image_models()

    # -- crash recovery --------------------------------------------------------------------------

    async def recover(self) -> RecoveryReport:
        """Settle or refund jobs a crash left open; record stored images nobody recorded."""
        return await CrashRecovery(self.ledger, self.store).run()

    # -- small helpers --------------------------------------------------------------------------

    _store_metadata = staticmethod(store_metadata)

    @staticmethod
    def _sum_cost(records: Any) -> Cost:
        total = ZERO_COST
        for record in records:
            total = total + Cost(record.cost_micro_usd, record.cost_milli_neurons)
        return total

    def _position_reporter(self, request: GenerateRequest) -> Any:
        if request.progress is None:
            return None
        progress = request.progress

        def report(position: int) -> None:
            progress(Progress("queued", position=position))

        return report

    def _report(self, request: GenerateRequest, stage: str, spec: ModelSpec) -> None:
        if request.progress is None:
            return
        now = datetime.now(UTC)
        eta = now + timedelta(seconds=spec.typical_seconds) if stage == "generating" else None
        request.progress(Progress(stage, started_at=now, eta=eta))
