"""The content check: a moderation model reads the prompt before anything else is charged.

Skipped when no model is configured (``MODERATION_MODEL=off``), and in an age-restricted
channel of a server whose rule allows adult content there; everywhere else (other channels,
DMs, the HTTP API, the CLI) the prompt and negative prompt are checked. The call is reserved
and settled like any model call (a job of kind 'enhance' with ``params.step = 'moderation'``);
a refused prompt keeps that small charge and raises ``ContentRefused`` before the image is
reserved. If the check itself fails, nothing is charged and the prompt is not let through.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from bot import moderation
from bot.backends import Backends
from bot.catalog import ZERO_COST, Catalog, Cost, ModelSpec
from bot.errors import ContentFlagged, ContentRefused, ProviderError, ProviderUnavailable, TooLate
from bot.generation.plan import Plan
from bot.lease_fence import LeaseFence
from bot.ledger import Ledger
from bot.ledger.ledger import DuplicateRequest, NewJob
from bot.moderation import Verdict
from bot.money import format_usd
from bot.requests import GenerateRequest

log = logging.getLogger(__name__)

STEP = "moderation"
UNAVAILABLE = "The content check is unavailable right now; nothing was charged. Try again soon."
NOTE_PREFIX = "moderation:"


@dataclass(frozen=True)
class Checked:
    """What the check cost and the job charged for it (None when no check was made)."""

    cost: Cost = ZERO_COST
    job_id: str | None = None


NOT_CHECKED = Checked()


def moderation_key(idempotency_key: str | None) -> str | None:
    return f"{idempotency_key}:{STEP}" if idempotency_key else None


class ContentModerator:
    def __init__(
        self, ledger: Ledger, catalog: Catalog, backends: Backends, model_id: str | None
    ) -> None:
        self.ledger = ledger
        self.catalog = catalog
        self.backends = backends
        self.model_id = model_id
        self.fence = LeaseFence(ledger, backends)

    def applies(self, request: GenerateRequest, plan: Plan) -> bool:
        """Whether this request is checked (see the module docstring)."""
        if self.model_id is None or not self.backends.provider.moderates:
            return False
        return not (plan.adult_content == "age_restricted" and request.age_restricted)

    async def check(self, request: GenerateRequest, plan: Plan) -> Checked:
        """Let the prompt through (with what the check cost), or raise ``ContentRefused``."""
        if not self.applies(request, plan):
            return NOT_CHECKED
        assert self.model_id is not None
        spec = self.catalog.get(self.model_id)
        text = moderation.moderated_text(plan.prompt, plan.negative_prompt)
        estimate = Cost.from_nano_usd(spec.price.tokens_nano_usd(
            moderation.estimate_input_tokens(text), moderation.MAX_TOKENS
        ))  # fmt: skip
        new = NewJob("enhance", request.user_id, request.guild_id, estimate, 0, spec.id,
                     moderation_key(request.idempotency_key), {"step": STEP})  # fmt: skip
        try:
            job = await self.ledger.reserve(new, plan.limits)
        except DuplicateRequest as duplicate:  # a retry: its first check was charged already
            return await self._recheck(spec, text, duplicate.job.note)
        try:
            verdict = await self._moderate(spec, text)
        except BaseException as exc:
            error = exc if isinstance(exc, ProviderError) else None
            await self.ledger.refund(job.id, error.code if error else "cancelled")
            raise
        actual = Cost.from_nano_usd(
            spec.price.tokens_nano_usd(verdict.input_tokens, verdict.output_tokens)
        ).at_most(estimate)
        if not await self.fence.settle_call(job, plan.limits, actual):
            raise TooLate()  # outlived its lease, not charged: the verdict is not used
        await self.ledger.note_job(job.id, NOTE_PREFIX + ",".join(verdict.categories or ("safe",)))
        if not verdict.safe:
            raise _refused(verdict.categories, actual)
        return Checked(actual, job.id)

    async def _recheck(self, spec: ModelSpec, text: str, note: str | None) -> Checked:
        """The verdict a retried request's first check gave, or (still running, or failed) the
        check made again without a second charge."""
        if note and note.startswith(NOTE_PREFIX):
            codes = tuple(note.removeprefix(NOTE_PREFIX).split(","))
            if codes == ("safe",):
                return NOT_CHECKED
            raise _refused(codes, ZERO_COST)
        verdict = await self._moderate(spec, text)
        if not verdict.safe:
            raise _refused(verdict.categories, ZERO_COST)
        return NOT_CHECKED

    async def _moderate(self, spec: ModelSpec, text: str) -> Verdict:
        """The model's verdict. The provider's own filter refusing the text is a refusal too; a
        failed check is ``ProviderUnavailable``: the prompt is never let through unchecked."""
        try:
            return await self.backends.provider.moderate(spec, text)
        except ContentFlagged:
            return Verdict(safe=False, categories=("flagged",))
        except ProviderError as exc:
            log.warning("content check failed (%s); the request is refused", exc.code)
            raise ProviderUnavailable(UNAVAILABLE) from None


def _refused(codes: tuple[str, ...], charged: Cost) -> ContentRefused:
    names = (
        "flagged by the image service's own filter" if codes == ("flagged",)
        else moderation.category_names(codes)
    )  # fmt: skip
    cost = format_usd(charged.micro_usd) if charged.micro_usd else None
    return ContentRefused(codes, names, cost)
