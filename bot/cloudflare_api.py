"""The one place that talks HTTP to Cloudflare: auth, retries, rate limiting and error mapping.

Every call goes through ``CloudflareAPI.request``. Each attempt first takes a slot of the
account-wide limiter (``AccountLimiter``: Cloudflare allows 1,200 API requests per 5 minutes per
token, and going over blocks every call for 5 minutes), shared fairly by generation and storage;
a generation's ``ai/run`` then also takes a slot of Workers AI's per-minute limit (``RunLimits``:
720 text-to-image runs, 1,500 img2img), whose shared budget bounds when its request must have been
sent: one not fully written by then is cut off (``until_sent``). A 429 that blocks the account
pauses every call for its ``Retry-After`` (or the block period). It retries only what can succeed
later (connection errors, timeouts, 408, 429, out-of-capacity 3040, 5xx), honouring Retry-After
on any status, with full-jitter exponential backoff inside a bounded time budget, and turns
Cloudflare's error envelope into the domain errors of ``bot.errors`` through an ``ErrorMapper``:
``provider_error`` for Workers AI (the default), ``store_error`` for Cloudflare Images. The API
token is kept out of reprs, log lines and every error message.
"""

from __future__ import annotations

import asyncio
import logging
import random
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import Any, Literal

import httpx

from bot.cloudflare_limits import (
    ACCOUNT_WINDOW_SECONDS,
    DEFAULT_ACCOUNT_REQUESTS,
    TEXT_TO_IMAGE_PER_MINUTE,
    AccountLimiter,
    CallKind,
    Clock,
    RunLimits,
    Sleep,
    SlotBudget,
    until_sent,
)
from bot.days import next_utc_midnight
from bot.errors import (
    BotError,
    Conflict,
    ContentFlagged,
    DailyAllocationExhausted,
    NotFound,
    PaidPlanRequired,
    ProviderAuthError,
    ProviderError,
    ProviderRateLimited,
    ProviderRejected,
    ProviderUnavailable,
    StoreError,
)
from bot.http_headers import full_jitter, is_json, retry_after_seconds
from bot.metrics import Metrics

log = logging.getLogger(__name__)


# Cloudflare error codes (see ../shared/reference/cloudflare.md).
CODE_FLAGGED = 3030
CODE_DAILY_ALLOCATION = 3036
CODE_OUT_OF_CAPACITY = 3040
CODE_TOO_LARGE = 3006
RETRYABLE_CODES = frozenset({CODE_OUT_OF_CAPACITY, 3007, 3008})
PAID_PLAN_CODES = frozenset({5035, 5016})  # with 403: "Workers Paid plan required"
AUTH_CODES = frozenset({3023, 5016, 5018, 3041, 10000})
UNKNOWN_MODEL_CODES = frozenset({5007, 3042})
RETRYABLE_STATUSES = frozenset({408, 429})
# 429s about one model or the free allowance, not the account's request rate.
NOT_ACCOUNT_LIMIT_CODES = frozenset({CODE_OUT_OF_CAPACITY, CODE_DAILY_ALLOCATION})


FLAGGED_MESSAGE = (
    "This prompt was refused by the image service's own content filter (or it flagged the "
    "image). The image was not charged. Try rewording it."
)
AUTH_MESSAGE = "The bot's Cloudflare credentials were refused; the operator needs to check them."
PAID_PLAN_MESSAGE = (
    "This model needs the Workers Paid plan on the bot's Cloudflare account. Pick another model "
    "(see /models) or ask the operator to upgrade the plan."
)
UNAVAILABLE_MESSAGE = "The image service is not answering right now; try again in a minute."
MALFORMED_MESSAGE = "The image service sent a broken response; try again in a minute."

_MAX_MESSAGE_CHARS = 160


@dataclass(frozen=True)
class Failure:
    """What went wrong with one call, stripped of anything secret; input to an ErrorMapper.

    ``reason`` is 'http' (an error status or ``success: false``), 'timeout', 'connection' or
    'malformed' (a 2xx whose JSON does not parse). ``retryable`` says whether the failure could
    succeed later, so a mapper seeing it knows retries were exhausted or the budget ran out.
    """

    method: str
    path: str
    reason: Literal["http", "timeout", "connection", "malformed"]
    status: int | None = None
    codes: tuple[int, ...] = ()
    message: str = ""
    retry_after: float | None = None
    retryable: bool = False
    attempts: int = 1

    def describe(self) -> str:
        """A short log-safe summary: reason, status and codes."""
        parts: list[str] = [self.reason]
        if self.status is not None:
            parts.append(f"status {self.status}")
        if self.codes:
            parts.append("code " + ",".join(str(c) for c in self.codes))
        return " ".join(parts)


ErrorMapper = Callable[[Failure], BotError]


def _model_in_path(path: str) -> str | None:
    prefix = "/ai/run/"
    return path[len(prefix) :] if path.startswith(prefix) else None


def provider_error(failure: Failure) -> BotError:
    """Map a Workers AI failure to a ``ProviderError`` subclass."""
    codes = set(failure.codes)
    status = failure.status
    if CODE_DAILY_ALLOCATION in codes:
        return DailyAllocationExhausted(resets_at=next_utc_midnight())
    if CODE_FLAGGED in codes:
        return ContentFlagged(FLAGGED_MESSAGE)
    if status == 403 and codes & PAID_PLAN_CODES:
        return PaidPlanRequired(PAID_PLAN_MESSAGE)
    if status in (401, 403) or codes & AUTH_CODES:
        return ProviderAuthError(AUTH_MESSAGE)
    if status == 404 or codes & UNKNOWN_MODEL_CODES:
        model = _model_in_path(failure.path)
        if model is None:
            return ProviderRejected("The image service does not know this endpoint (HTTP 404).")
        return ProviderRejected(f"The image service does not know the model {model!r}.")
    if status == 413 or CODE_TOO_LARGE in codes:
        return ProviderRejected("The image service refused the request: request too large.")
    if failure.reason == "malformed":
        return ProviderUnavailable(MALFORMED_MESSAGE)
    if failure.retryable:
        if status == 429 and CODE_OUT_OF_CAPACITY not in codes:
            wait = f"{failure.retry_after:.0f} seconds" if failure.retry_after else "a minute"
            return ProviderRateLimited(
                f"The image service is rate-limiting the bot; try again in {wait}.",
                retry_after=failure.retry_after,
            )
        return ProviderUnavailable(UNAVAILABLE_MESSAGE)
    detail = failure.message or f"HTTP {status}"
    return ProviderRejected(f"The image service rejected the request ({detail}).")


def store_error(failure: Failure) -> BotError:
    """Map a Cloudflare Images failure: 404 → NotFound, 409 → Conflict, else ``StoreError``."""
    status = failure.status
    if status == 404:
        return NotFound("The image is not in the image store.")
    if status == 409:
        return Conflict("The image store already holds an image with this id.")
    if status in (401, 403) or set(failure.codes) & AUTH_CODES:
        return StoreError(
            "The bot's Cloudflare credentials were refused by the image store; "
            "the operator needs to check them."
        )
    if status == 413 or CODE_TOO_LARGE in failure.codes:
        return StoreError("The image store refused the image: too large.")
    if failure.retryable or failure.reason == "malformed":
        return StoreError("The image store is not answering right now; try again in a minute.")
    detail = failure.message or f"HTTP {status}"
    return StoreError(f"The image store rejected the request ({detail}).")


def _is_json(response: httpx.Response) -> bool:
    return is_json(str(response.headers.get("content-type", "")))


class CloudflareAPI:
    """A thin authenticated client for ``{base_url}/accounts/{account_id}/…``.

    The httpx client is shared and owned by the caller. ``max_total_seconds`` bounds the time
    one ``request`` spends on attempts and backoff (waiting for the rate limiters before the
    first attempt is not counted: that is our own queue, not Cloudflare failing).
    ``account_requests`` per ``account_window_seconds`` is the account-wide limit every call
    shares; ``account_block_seconds`` is how long a 429 without ``Retry-After`` pauses them all.
    ``runs`` are the ``ai/run`` limiters (by default per process, ``text_to_image_per_minute``).
    ``max_connections`` is the httpx pool's size: at most that many calls are handed to httpx at
    once, the rest wait here (FIFO). httpcore re-scans every queued request against every
    connection each time one is added or finishes, so a queue inside httpcore costs O(n²)
    CPU in the calls waiting; a queue here costs nothing while it waits.
    """

    def __init__(
        self,
        http: httpx.AsyncClient,
        *,
        account_id: str,
        api_token: str,
        base_url: str = "https://api.cloudflare.com/client/v4",
        max_attempts: int = 4,
        max_total_seconds: float = 60.0,
        backoff_base: float = 0.5,
        backoff_max: float = 8.0,
        text_to_image_per_minute: int = TEXT_TO_IMAGE_PER_MINUTE,
        runs: RunLimits | None = None,
        account_requests: int = DEFAULT_ACCOUNT_REQUESTS,
        account_window_seconds: float = ACCOUNT_WINDOW_SECONDS,
        account_block_seconds: float = ACCOUNT_WINDOW_SECONDS,
        max_connections: int = 64,
        account_budget: SlotBudget | None = None,
        sleep: Sleep = asyncio.sleep,
        clock: Clock = time.monotonic,
        metrics: Metrics | None = None,
    ) -> None:
        self._http = http
        self._metrics = metrics or Metrics()
        self._account_id = account_id
        self._token = api_token
        self._base_url = base_url.rstrip("/")
        self.max_attempts = max(1, max_attempts)
        self.max_total_seconds = max_total_seconds
        self.backoff_base = backoff_base
        self.backoff_max = backoff_max
        self._sleep = sleep
        self._clock = clock
        self._random = random.Random()
        self.runs = runs or RunLimits(text_to_image_per_minute, clock=clock, sleep=sleep)
        self.account = AccountLimiter(account_requests, account_window_seconds,
                                      clock=clock, sleep=sleep, budget=account_budget)  # fmt: skip
        self.account_block_seconds = account_block_seconds
        self._connections = asyncio.Semaphore(max(1, max_connections))

    def __repr__(self) -> str:
        return f"CloudflareAPI(base_url={self._base_url!r})"

    def backoff(self, attempt: int) -> float:
        """Full jitter: uniform in [0, min(max, base·2^(attempt-1))]."""
        return full_jitter(attempt, self.backoff_base, self.backoff_max, self._random)

    async def request(
        self,
        method: str,
        path: str,
        *,
        json: Any = None,
        files: Mapping[str, Any] | None = None,
        data: Mapping[str, Any] | None = None,
        params: Mapping[str, str | int] | None = None,
        rate_limited: bool = False,
        expect: Literal["any", "json"] = "any",
        errors: ErrorMapper = provider_error,
        attempts: int | None = None,
    ) -> httpx.Response:
        """Send one call (with retries) and return the successful response.

        ``expect='json'`` requires a JSON object body; with ``'any'`` only a body that claims
        to be JSON must parse. A malformed body is retried once, as a server fault. Failures
        are raised as ``errors(failure)`` (``provider_error`` unless the caller is the store);
        ``attempts`` overrides ``max_attempts`` (health checks use 1).
        """
        url = f"{self._base_url}/accounts/{self._account_id}{path}"
        kind: CallKind = "storage" if path.startswith("/images/") else "generation"
        max_attempts = max(1, attempts or self.max_attempts)
        deadline: float | None = None
        flagged = malformed = 0
        attempt = 0
        while True:
            attempt += 1
            wanted = self._clock()
            # The run's slot last, just before sending: its send bound is short.
            async with self.account.slot(kind) as must_end:
                send_by = await self.runs.for_path(path).acquire() if rate_limited else None
                async with self._connections:
                    self._metrics.limiter_wait_seconds.labels(kind).observe(self._clock() - wanted)
                    if deadline is None:
                        deadline = self._clock() + self.max_total_seconds
                    ends = deadline if must_end is None else min(deadline, must_end)
                    outcome = await self._attempt(method, url, path, ends, send_by, json=json,
                                                  files=files, data=data, params=params,
                                                  expect=expect)  # fmt: skip
            self._count(kind, outcome)
            if isinstance(outcome, httpx.Response):
                return outcome
            failure = self._note_account_block(replace(outcome, attempts=attempt))
            retry = failure.retryable
            if CODE_FLAGGED in failure.codes:
                retry, flagged = flagged == 0, flagged + 1
            elif failure.reason == "malformed":
                retry, malformed = malformed == 0, malformed + 1
            remaining = deadline - self._clock()
            if not retry or attempt >= max_attempts or remaining <= 0:
                raise self._give_up(failure, errors)
            # While the account is paused, the account limiter holds this call back with every
            # other one; there is no backoff of its own to sleep.
            paused = self.account.paused_for
            must_wait = max(failure.retry_after or 0.0, paused)
            if must_wait > remaining:
                log.info(
                    "Cloudflare %s %s: %s asks to wait %.1fs, more than the %.1fs left; giving up",
                    method,
                    path,
                    failure.describe(),
                    must_wait,
                    remaining,
                )
                raise self._give_up(failure, errors)
            delay = self.backoff(attempt) if failure.retry_after is None else failure.retry_after
            delay = paused or min(delay, remaining)
            log.info(
                "Cloudflare %s %s: %s on attempt %d/%d; retrying in %.2fs",
                method,
                path,
                failure.describe(),
                attempt,
                max_attempts,
                delay,
            )
            if not paused:
                await self._sleep(delay)

    def _count(self, kind: CallKind, outcome: httpx.Response | Failure) -> None:
        """One attempt in /metrics: its HTTP status, or why no answer came."""
        if isinstance(outcome, httpx.Response):
            status = str(outcome.status_code)
        else:
            status = str(outcome.status) if outcome.status else outcome.reason
        self._metrics.cloudflare_responses.labels(kind, status).inc()

    def _note_account_block(self, failure: Failure) -> Failure:
        """A rate-limit 429 may mean the whole account is blocked: pause every call for its
        Retry-After (or the block period), and let this call wait exactly as long."""
        if failure.status != 429 or set(failure.codes) & NOT_ACCOUNT_LIMIT_CODES:
            return failure
        pause = failure.retry_after
        if pause is None:
            pause = self.account_block_seconds
        self.account.pause(pause)
        log.warning(
            "Cloudflare %s %s: rate-limited (429); pausing every Cloudflare call for %.1fs",
            failure.method,
            failure.path,
            pause,
        )
        return replace(failure, retry_after=pause)

    def _give_up(self, failure: Failure, errors: ErrorMapper) -> BotError:
        error = errors(failure)
        log.warning(
            "Cloudflare %s %s failed after %d attempt(s): %s -> %s",
            failure.method,
            failure.path,
            failure.attempts,
            failure.describe(),
            error.code,
        )
        return error

    async def _attempt(
        self,
        method: str,
        url: str,
        path: str,
        deadline: float,
        send_by: float | None,
        *,
        json: Any,
        files: Mapping[str, Any] | None,
        data: Mapping[str, Any] | None,
        params: Mapping[str, str | int] | None,
        expect: Literal["any", "json"],
    ) -> httpx.Response | Failure:
        headers = {"Authorization": f"Bearer {self._token}"}
        try:
            # The budget bounds a slow attempt, whatever httpx's timeouts; a send bound its sending.
            first = deadline if send_by is None else min(deadline, send_by)
            async with asyncio.timeout(max(0.0, first - self._clock())) as cut:
                sent = {} if send_by is None else {"trace": until_sent(cut, send_by, deadline,
                                                                       self._clock)}
                response = await self._http.request(method, url, json=json, files=files, data=data,
                                                    params=params, headers=headers,
                                                    extensions=sent)  # fmt: skip
        except (httpx.TimeoutException, TimeoutError):
            return Failure(method, path, "timeout", retryable=True)
        except httpx.UnsupportedProtocol:
            raise ProviderError("The Cloudflare API address is not an http(s) URL.") from None
        except httpx.TransportError as exc:
            log.debug("Cloudflare %s %s: %s", method, path, type(exc).__name__)
            return Failure(method, path, "connection", retryable=True)

        body: Any = None
        if expect == "json" or _is_json(response):
            try:
                body = response.json()
            except ValueError:
                if response.is_success:
                    return Failure(method, path, "malformed", status=response.status_code)
        if expect == "json" and response.is_success and not isinstance(body, dict):
            return Failure(method, path, "malformed", status=response.status_code)
        failed_envelope = isinstance(body, dict) and body.get("success") is False
        if response.is_success and not failed_envelope:
            return response
        return self._http_failure(method, path, response, body)

    def _http_failure(self, method: str, path: str, response: httpx.Response, body: Any) -> Failure:
        status = response.status_code
        codes: list[int] = []
        message = ""
        errors = body.get("errors") if isinstance(body, dict) else None
        if isinstance(errors, list):
            for item in errors:
                if not isinstance(item, dict):
                    continue
                code = item.get("code")
                if isinstance(code, int) and not isinstance(code, bool):
                    codes.append(code)
                if not message and isinstance(item.get("message"), str):
                    message = self._safe_text(item["message"])
        retryable = (
            status in RETRYABLE_STATUSES or status >= 500 or bool(RETRYABLE_CODES & set(codes))
        ) and CODE_DAILY_ALLOCATION not in codes
        retry_after = retry_after_seconds(response)
        return Failure(
            method,
            path,
            "http",
            status=status,
            codes=tuple(codes),
            message=message,
            retry_after=retry_after,
            retryable=retryable,
        )

    def _safe_text(self, text: str) -> str:
        """Cloudflare's own short message, without secrets, URLs or control characters."""
        for secret, placeholder in ((self._token, "[redacted]"), (self._account_id, "[account]")):
            if secret:
                text = text.replace(secret, placeholder)
        text = re.sub(r"https?://\S+", "[url]", text)
        text = " ".join("".join(ch if ch.isprintable() else " " for ch in text).split())
        if len(text) > _MAX_MESSAGE_CHARS:
            text = text[: _MAX_MESSAGE_CHARS - 1] + "…"
        return text
