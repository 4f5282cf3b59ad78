"""Domain errors: a small hierarchy, each with a message that is safe to show a user.

Fronts map these in one place (the Discord command tree's ``on_error``, the HTTP API's error
middleware, the CLI's exit path). ``user_message`` never contains a secret, a path or a stack
trace; ``code`` is a stable machine-readable name for APIs and tests.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from bot.money import format_usd


class BotError(Exception):
    """Base of every error a user may see. ``str(error)`` is the user-safe message."""

    code = "error"
    http_status = 500

    def __init__(self, user_message: str, **details: Any) -> None:
        super().__init__(user_message)
        self.user_message = user_message
        self.details: dict[str, Any] = details


class ConfigError(BotError):
    """Bad configuration: names the variable and what is wrong (never its value)."""

    code = "config"

    def __init__(self, variable: str, problem: str) -> None:
        super().__init__(f"{variable}: {problem}", variable=variable)
        self.variable = variable


class InvalidRequest(BotError):
    """A request that can never succeed as sent; ``field`` names the offending input."""

    code = "invalid_request"
    http_status = 400

    def __init__(self, field: str, message: str, **details: Any) -> None:
        super().__init__(message, field=field, **details)
        self.field = field


class InvalidPrompt(InvalidRequest):
    code = "invalid_prompt"

    def __init__(self, message: str) -> None:
        super().__init__("prompt", message)


class InvalidModel(InvalidRequest):
    code = "invalid_model"

    def __init__(self, model: str, message: str | None = None) -> None:
        super().__init__("model", message or f"Unknown or disabled model: {model!r}.", model=model)


class InvalidImage(InvalidRequest):
    """An attachment or upload that is not an acceptable image (type, size, dimensions, corrupt)."""

    code = "invalid_image"

    def __init__(self, message: str, problem: str = "invalid") -> None:
        super().__init__("image", message, problem=problem)
        self.problem = problem


class NotFound(BotError):
    code = "not_found"
    http_status = 404


class Unauthorized(BotError):
    """No API key, or one that is wrong or revoked."""

    code = "unauthorized"
    http_status = 401


class Forbidden(BotError):
    code = "forbidden"
    http_status = 403


class Conflict(BotError):
    code = "conflict"
    http_status = 409


class IdempotencyKeyReused(Conflict):
    """An idempotency key sent again with a different request: nothing was done or charged."""

    code = "idempotency_key_reused"

    def __init__(self) -> None:
        super().__init__(
            "This idempotency key was already used for a different request; nothing was done. "
            "Use a new key for a new request."
        )


@dataclass(frozen=True)
class Refusal:
    """Which daily limit a request would cross, in numbers (no words): the ledger's answer.

    ``used`` and ``allowed`` are in the limit's own unit (images, micro-dollars, milli-Neurons,
    uploads or bytes); ``requested`` is what the refused request would have added."""

    limit: str
    used: int
    allowed: int
    requested: int
    resets_at: datetime


class QuotaExceeded(BotError):
    """A reservation would cross a limit. Says which limit and when it resets; ``refusal``
    holds the numbers when the ledger refused it (``bot.refusals`` words them)."""

    code = "quota_exceeded"
    http_status = 403

    def __init__(
        self, limit: str, message: str, resets_at: datetime, refusal: Refusal | None = None
    ) -> None:
        super().__init__(message, limit=limit, resets_at=resets_at.isoformat())
        self.limit = limit
        self.resets_at = resets_at
        self.refusal = refusal


class Busy(BotError):
    """The queue is full or the user already has too much waiting: try again shortly."""

    code = "busy"
    http_status = 429


class ShuttingDown(BotError):
    """The process is stopping (SIGTERM): new work is refused, and a job that did not finish
    within the grace was cancelled and refunded. Another process (or this one, restarted)
    takes the retry."""

    code = "shutting_down"
    http_status = 503
    retry_after = 5


class JobCancelled(BotError):
    """Its owner (or an admin) cancelled the job before the provider was called: the image is
    refunded. ``paid_micro_usd``: what the model calls already made for it (``paid_for``: the
    prompt enhancement, the content check) cost; they ran and were billed, so stay charged."""

    code = "cancelled"
    http_status = 409

    def __init__(self, paid_micro_usd: int = 0, paid_for: str = "") -> None:
        self.paid_micro_usd = paid_micro_usd
        if paid_micro_usd:
            super().__init__(
                "Cancelled before the image was generated: the image was not charged; "
                f"{still_charged(paid_micro_usd, paid_for)}."
            )
        else:
            super().__init__("Cancelled before the image was generated: nothing was charged.")


def still_charged(micro_usd: int, calls: str) -> str:
    """What a cancelled job keeps charged, in words: ``calls`` ('prompt enhancement', 'content
    check', or both joined by 'and') ran before its image and were billed."""
    verb = "stay" if " and " in calls else "stays"
    return f"the {calls} that already ran {verb} charged ({format_usd(micro_usd)})"


class TooLate(BotError):
    """The job outlived its process's lease: crash recovery elsewhere closed it, and it could
    not be charged late (no room left today). Not delivered, not charged."""

    code = "too_late"
    http_status = 409

    def __init__(self, message: str | None = None) -> None:
        super().__init__(
            message or "This took too long and was cancelled; you were not charged. "
            "Please try again."
        )


class ProviderError(BotError):
    """The image provider failed. Subclasses say whether it is worth trying again later."""

    code = "provider_error"
    http_status = 502
    retryable = False


class ProviderUnavailable(ProviderError):
    """Connection errors, timeouts, 5xx, capacity: retried, then given up on."""

    code = "provider_unavailable"
    retryable = True


class ProviderRateLimited(ProviderUnavailable):
    code = "provider_rate_limited"

    def __init__(self, user_message: str, retry_after: float | None = None) -> None:
        super().__init__(user_message, retry_after=retry_after)
        self.retry_after = retry_after


class DailyAllocationExhausted(ProviderError):
    """Cloudflare error 3036: the account's free daily Neurons are used up until 00:00 UTC."""

    code = "daily_allocation_exhausted"
    http_status = 429

    def __init__(self, resets_at: datetime) -> None:
        super().__init__(
            "The image service's free daily allowance is used up; it resets at 00:00 UTC.",
            resets_at=resets_at.isoformat(),
        )
        self.resets_at = resets_at


class ContentRefused(Forbidden):
    """The server's content rules refused the prompt (the moderation model named ``category``,
    e.g. S12). No image was made or charged; only the check itself was."""

    code = "content_refused"

    def __init__(self, categories: tuple[str, ...], names: str, charged: str | None) -> None:
        cost = f" Only the content check was charged ({charged})." if charged else ""
        super().__init__(
            f"This prompt was refused by the server's content rules: {names}.{cost}",
            category=categories[0] if categories else "unsafe",
            categories=list(categories),
        )
        self.categories = categories


class ContentFlagged(ProviderError):
    """The provider refused the prompt or flagged the output (Cloudflare 3030): a refusal,
    shown as one (never as a failed generation), and not charged."""

    code = "content_flagged"
    http_status = 403

    def __init__(self, user_message: str) -> None:
        super().__init__(user_message, category="flagged")


class ProviderRejected(ProviderError):
    """The provider said the request itself is wrong (400/404/413): not worth retrying."""

    code = "provider_rejected"


class ProviderAuthError(ProviderError):
    """The operator's credentials were refused (401/403): only the operator can fix it."""

    code = "provider_auth"


class PaidPlanRequired(ProviderError):
    """Cloudflare 403 with code 5035 or 5016: this model needs the Workers Paid plan. The token
    is fine; the operator must upgrade the account or offer another model."""

    code = "paid_plan_required"


class LedgerUnavailable(BotError):
    """The database is locked by someone else or out of space: nothing was charged."""

    code = "ledger_unavailable"
    http_status = 503


class StoreError(BotError):
    """The image store failed to save, fetch or delete."""

    code = "store_error"
    http_status = 502


@dataclass(frozen=True)
class ErrorInfo:
    """A flattened error for fronts that serialise it (HTTP JSON, CLI --json)."""

    code: str
    message: str
    details: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def of(cls, error: BotError) -> ErrorInfo:
        return cls(error.code, error.user_message, dict(error.details))
