"""Prompt enhancement: a text model rewrites the prompt, reserved and charged like any call.

On any provider failure the original prompt is used and the reservation refunded, so a
failed enhancement never costs the user and never stops the image."""

from __future__ import annotations

import logging

from bot import enhance
from bot.backends import Backends
from bot.catalog import ZERO_COST, Catalog, Cost
from bot.errors import InvalidModel, ProviderError
from bot.generation.plan import Plan
from bot.lease_fence import LeaseFence
from bot.ledger import Ledger
from bot.ledger.ledger import DuplicateRequest, NewJob
from bot.requests import GenerateRequest

log = logging.getLogger(__name__)


class PromptEnhancer:
    def __init__(
        self, ledger: Ledger, catalog: Catalog, backends: Backends, enhance_model: str
    ) -> None:
        self.ledger = ledger
        self.catalog = catalog
        self.backends = backends
        self.enhance_model = enhance_model
        self.fence = LeaseFence(ledger, backends)

    async def enhance(self, request: GenerateRequest, plan: Plan) -> tuple[str, Cost, str | None]:
        """The prompt to use, what it cost, and the job charged for it (None if none was)."""
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
            answer = await self.backends.complete(
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
        ).at_most(estimate)
        if not await self.fence.settle_call(job, plan.limits, actual):
            return plan.prompt, ZERO_COST, None  # outlived its lease, not charged: not used
        text = enhance.tidy_answer(answer.text, plan.prompt, plan.spec.max_prompt_chars)
        return text, actual, job.id
