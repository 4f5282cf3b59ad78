"""The generation pipeline, in the order it runs.

``generate`` reads top to bottom: replay a known request → plan (validate, template, model,
price) → check the content (the server's rules; ``moderation``) → look in the cache → join an
identical request in flight (single-flight: in this process, then in any, ``shared_flights``)
→ enhance → reserve → wait for a slot → generate →
store → record and settle (or refund). The content check comes before the cache, so a cached
image is never handed to a request its rules would refuse. A reserved job
is live (``live.py``) until its charge is written: ``cancel`` takes it out of the line, and the
pipeline checks for a cancel at each step boundary before the provider call.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import weakref
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from bot import imaging
from bot.backends import Backends
from bot.catalog import ZERO_COST, Cost
from bot.days import next_utc_midnight
from bot.errors import BotError, JobCancelled, ShuttingDown, TooLate
from bot.generation.enhancement import PromptEnhancer
from bot.generation.live import LiveJob, LiveJobs
from bot.generation.moderation import Checked, ContentModerator
from bot.generation.plan import Plan, Planner, Slot, slot_of
from bot.generation.progress import position_reporter, report
from bot.generation.records import hit_records, new_job, total_cost
from bot.generation.shared_flights import SharedFlights, Taken
from bot.generation.single_flight import Flights, SingleFlight
from bot.idempotency import check_same_request, request_fingerprint
from bot.image_records import StoredBytes, image_record
from bot.lease_fence import LeaseFence
from bot.ledger import ImageRecord, Job, Ledger
from bot.ledger.ledger import DuplicateRequest
from bot.ledger.records import new_id
from bot.providers.base import GeneratedImage, ImageRequest
from bot.requests import Cancellation, GenerateRequest, GenerationResult, QueueStatus, Remaining
from bot.scheduler import JobScheduler
from bot.stores.base import store_metadata

log = logging.getLogger(__name__)

RecordOrUnstore = Callable[[ImageRecord], Awaitable[bool]]  # False: no longer this job's owner


class GenerationPipeline:
    def __init__(
        self,
        *,
        ledger: Ledger,
        backends: Backends,
        scheduler: JobScheduler,
        planner: Planner,
        enhancer: PromptEnhancer,
        moderator: ContentModerator,
        record_or_unstore: RecordOrUnstore,
        shared: SharedFlights,
    ) -> None:
        self.ledger = ledger
        self.backends = backends
        self.scheduler = scheduler
        self.planner = planner
        self.enhancer = enhancer
        self.moderator = moderator
        self._record_or_unstore = record_or_unstore
        self.fence = LeaseFence(ledger, backends)  # when this process outlived its lease
        self._flights = SingleFlight()
        self.shared = shared  # the same, across processes
        self._by_key: dict[str, asyncio.Future[None]] = {}
        self._active: set[asyncio.Task[Any]] = set()
        self.drained: weakref.WeakSet[asyncio.Task[Any]] = weakref.WeakSet()  # ``drain`` cut
        self.live = LiveJobs(ledger, scheduler.max_running)
        self.closing = False

    async def generate(self, request: GenerateRequest) -> GenerationResult:
        if self.closing:
            raise ShuttingDown("The bot is restarting; try again in a moment.")
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
            self.drained.add(task)
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
        return len(pending)

    async def cancel(
        self, job_id: str, *, requester_id: str, guild_id: str, is_admin: bool
    ) -> Cancellation:
        """Cancel a job for its owner or an admin of its server (Forbidden for anyone else);
        see ``Cancellation`` for the outcomes. Idempotent: a second cancel says ``already``."""
        return await self.live.cancel_job(
            job_id, requester_id=requester_id, guild_id=guild_id, is_admin=is_admin
        )

    def queue_status(self, user_id: str, guild_id: str) -> QueueStatus:
        """The user's live jobs in this server (state, place, ETA) and the server's queue."""
        return self.live.status(user_id, guild_id, self.scheduler.waiting)

    async def remaining(
        self, user_id: str, guild_id: str, role_ids: Sequence[str] = ()
    ) -> Remaining:
        limits, used = await self.ledger.limits_and_usage(user_id, guild_id, role_ids)
        return Remaining.of(limits, used, next_utc_midnight(self.ledger.clock()))

    async def _generate(self, request: GenerateRequest) -> GenerationResult:
        if request.idempotency_key:
            replayed = await self._replay(request)
            if replayed is not None:
                return replayed
        plan = await self.planner.plan(request)
        checked = await self.moderator.check(request, plan)
        slots = [slot_of(plan, i) for i in range(plan.count)]
        hits = await self._cached(plan, slots, request.fresh)
        joined = self._flights.joinable(plan, [s for s in slots if s.index not in hits])
        own = [s for s in slots if s.index not in hits and s.index not in joined]
        if not own:
            return await self._joined_result(request, plan, slots, hits, joined, checked)
        # Claimed with no await since the cache check, so an identical request arriving now
        # joins this one instead of generating again.
        futures = self._flights.claim(plan, own)
        taken = Taken()
        try:
            taken = await self.shared.take(plan, own, fresh=request.fresh)
            for index, record in taken.found.items():  # another process made it: free
                hits[index] = record
                futures[index].set_result(record)
            if not taken.generate:
                return await self._joined_result(request, plan, slots, hits, joined, checked)
            return await self._paid_result(request, plan, taken, hits, joined, futures, checked)
        except BaseException as exc:
            self._flights.fail(futures, exc)
            raise
        finally:
            self._flights.release(plan, own, futures)
            await self.shared.release(plan, taken)

    async def _joined_result(
        self,
        request: GenerateRequest,
        plan: Plan,
        slots: list[Slot],
        hits: dict[int, ImageRecord],
        joined: Flights,
        checked: Checked,
    ) -> GenerationResult:
        """Every image came from the cache or an identical request in flight: free."""
        try:
            for index, future in joined.items():
                hits[index] = await future
        except JobCancelled:  # its owner cancelled the job we joined: make our own
            return await self._generate(request)
        return await self._free_result(request, plan, slots, hits, checked)

    async def _cached(self, plan: Plan, slots: list[Slot], fresh: bool) -> dict[int, ImageRecord]:
        if fresh or plan.cache_scope is None:
            return {}
        found = {}
        for slot in slots:
            hit = await self.ledger.find_cached(slot.cache_key, plan.cache_scope)
            if hit is not None:
                found[slot.index] = hit
        return found

    async def _paid_result(
        self,
        request: GenerateRequest,
        plan: Plan,
        taken: Taken,
        hits: dict[int, ImageRecord],
        joined: Flights,
        futures: Flights,
        checked: Checked,
    ) -> GenerationResult:
        own = taken.generate
        prompt_used, enhance_cost, enhance_job = plan.prompt, ZERO_COST, None
        if request.enhance:
            prompt_used, enhance_cost, enhance_job = await self.enhancer.enhance(request, plan)
        try:
            job = await self.ledger.reserve(
                new_job(request, plan, own, prompt_used, images=len(own)),
                plan.limits,
                hold=request.allowance_hold,
            )
        except DuplicateRequest:
            replayed = await self._replay(request)
            assert replayed is not None
            return replayed
        # Refused here (a quota) or cancelled later, the enhancement and the content check stay
        # charged: they ran and were billed (their jobs are settled, never refunded after).
        done = asyncio.get_running_loop().create_future()
        if request.idempotency_key:
            self._by_key[request.idempotency_key] = done
        paid = (enhance_cost + checked.cost).micro_usd, _paid_for(enhance_job, checked)
        live = self.live.add(job.id, request.user_id, request.guild_id, plan.spec.id,
                             plan.prompt, plan.spec.typical_seconds, paid)  # fmt: skip
        try:
            try:
                produced, failures = await self._run_job(request, plan, job, own, prompt_used, live)
            except JobCancelled:  # the image is refunded; what ran before it stays charged
                raise JobCancelled(*paid) from None
            finally:
                self.live.written(live)
            for slot in own:
                if slot.index in produced:
                    futures[slot.index].set_result(produced[slot.index])
            await self.shared.release(plan, taken)  # before waiting for others' images
            found, missed = await self.shared.pending(plan, taken.pending)
            for index, record in found.items():
                hits[index] = record
                futures[index].set_result(record)
            failures += missed.values()
            for index, future in joined.items():
                try:
                    hits[index] = await future
                except BotError as exc:
                    failures.append(exc)
        finally:
            self.live.forget(live)
            done.set_result(None)
            if request.idempotency_key:
                self._by_key.pop(request.idempotency_key, None)
        copies = hit_records(request, hits, job.id, self.ledger.now_iso())
        await asyncio.gather(*(self.ledger.add_image(r) for r in copies.values()))
        merged = {**produced, **copies}
        return GenerationResult(
            images=[merged[index] for index in sorted(merged)],
            prompt=plan.prompt,
            prompt_used=prompt_used,
            enhanced=request.enhance,
            cost=total_cost(produced.values()) + enhance_cost + checked.cost,
            remaining=await self.remaining(request.user_id, request.guild_id, request.role_ids),
            job_id=job.id,
            failed=len(failures),
            withdrawn=live.withdrawn,
        )

    async def _run_job(
        self,
        request: GenerateRequest,
        plan: Plan,
        job: Job,
        own: list[Slot],
        prompt_used: str,
        live: LiveJob,
    ) -> tuple[dict[int, ImageRecord], list[BotError]]:
        """Wait in line, then generate, store and record each own image; settle for what was
        made, else refund (a cancel before the provider call: JobCancelled, refunded)."""
        produced: dict[int, ImageRecord] = {}
        unrecorded: list[ImageRecord] = []  # the job was taken over meanwhile (lease_fence)
        failures: list[BotError] = []
        reporter = position_reporter(request, job.id)
        try:
            async with self.scheduler.slot(request.user_id, reporter, live.ticket):
                self.live.start(live)  # raises JobCancelled if cancelled while in line
                report(request, "generating", plan.spec, job.id)
                generated = await asyncio.gather(
                    *(self._generate_one(plan, slot, prompt_used) for slot in own),
                    return_exceptions=True,
                )
                image_ids = [entry["id"] for entry in job.params["slots"]]
                await self.ledger.set_state(job.id, "storing", image_ids)
                live.stage = "storing"
                report(request, "storing", plan.spec, job.id)
                stored = await asyncio.gather(
                    *(
                        self._store_one(request, plan, job, image_id, result)
                        for image_id, result in zip(image_ids, generated, strict=True)
                    ),
                    return_exceptions=True,
                )
            for slot, outcome in zip(own, stored, strict=True):
                if isinstance(outcome, tuple):
                    produced[slot.index], recorded = outcome
                    if not recorded:
                        unrecorded.append(outcome[0])
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
                with contextlib.suppress(TooLate):
                    await self.fence.settle(job, plan.limits, produced, unrecorded,
                                            len(produced), plan.cost_of(len(produced)))
            raise
        if not produced:
            first = failures[0]
            await self.ledger.refund(job.id, first.code, first.user_message)
            raise first
        # charged; if another process's recovery took the job over, closed exactly (lease_fence)
        produced = await self.fence.settle(job, plan.limits, produced, unrecorded,
                                           len(produced), plan.cost_of(len(produced)))  # fmt: skip
        report(request, "done", plan.spec, job.id)
        return produced, failures

    async def _generate_one(self, plan: Plan, slot: Slot, prompt_used: str) -> GeneratedImage:
        return await self.backends.generate(
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
        plan: Plan,
        job: Job,
        image_id: str,
        generated: GeneratedImage | BaseException,
    ) -> tuple[ImageRecord, bool]:
        """The image stored, and whether it is recorded (False: the job is no longer ours)."""
        if isinstance(generated, BaseException):
            raise generated
        width, height = imaging.image_size(generated.data)  # header only: microseconds
        store, provider = self.backends.store, self.backends.provider
        stored = await self.backends.put(
            image_id,
            generated.data,
            generated.content_type,
            store_metadata(image_id, request.user_id, request.guild_id, plan.spec.id, plan.prompt,
                           request.metadata),
        )  # fmt: skip
        held = StoredBytes(stored, store.name, generated.content_type, width, height,
                           len(generated.data))  # fmt: skip
        record = image_record(
            job, image_id, held, cost=plan.unit_cost,
            seed_shown=plan.spec.supports_seed or provider.honours_every_seed,
            created_at=self.ledger.now_iso(),
        )  # fmt: skip
        return record, await self._record_or_unstore(record)

    async def _free_result(
        self,
        request: GenerateRequest,
        plan: Plan,
        slots: list[Slot],
        hits: dict[int, ImageRecord],
        checked: Checked,
    ) -> GenerationResult:
        ids = {slot.index: new_id("img") for slot in slots}
        job_id = new_id("job")
        records = hit_records(request, hits, job_id, self.ledger.now_iso(), ids)
        try:
            job = await self.ledger.record_free_job(
                new_job(request, plan, [], plan.prompt, images=0),
                job_id,
                [records[s.index] for s in slots],
            )
        except DuplicateRequest as duplicate:
            check_same_request(duplicate.job, request_fingerprint(request))
            return await self.result_of(duplicate.job, request.guild_id, replayed=True)
        report(request, "done", plan.spec, job.id)
        images = [records[index] for index in sorted(records)]
        return GenerationResult(
            images=images,
            prompt=plan.prompt,
            prompt_used=images[0].prompt_used or plan.prompt,
            enhanced=False,
            cost=checked.cost,
            # a free hit changes nothing since the policy was read (a content check may have)
            remaining=await self.remaining(request.user_id, request.guild_id, request.role_ids)
            if checked.job_id else
            Remaining.of(plan.limits, plan.usage, next_utc_midnight(self.ledger.clock())),
            job_id=job.id,
        )  # fmt: skip

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
        return await self.result_of(job, request.guild_id, replayed=True)

    async def result_of(self, job: Job, guild_id: str, *, replayed: bool) -> GenerationResult:
        """The result a finished job gave; its refusal again if it was refunded."""
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


def _paid_for(enhance_job: str | None, checked: Checked) -> str:
    """What ran (and is charged) before a cancelled job's image, in words."""
    calls = [name for name, job in (("prompt enhancement", enhance_job),
                                    ("content check", checked.job_id)) if job]  # fmt: skip
    return " and ".join(calls)
