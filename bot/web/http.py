"""HTTP plumbing shared by the API handlers: JSON responses, the error shape, strict bodies.

Every error leaves as ``{"error": "...", "details": {...}}`` with a 4xx or 5xx status; nothing
else ever reaches a client (no stack trace, no secret).
"""

from __future__ import annotations

import json
import logging
import secrets
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from bot.errors import (
    BotError,
    Busy,
    ContentFlagged,
    ContentRefused,
    InvalidModel,
    InvalidRequest,
    ProviderError,
    QuotaExceeded,
    ShuttingDown,
    StoreError,
)

log = logging.getLogger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
JSON_LIMIT = 64 * 1024


class RateLimited(BotError):
    code = "rate_limited"
    http_status = 429

    def __init__(self, retry_after: int, what: str = "Too many requests for this key") -> None:
        super().__init__(f"{what}; try again in {retry_after} s.", retry_after=retry_after)
        self.retry_after = retry_after


class RequestTimeout(BotError):
    """The client did not send its request (headers or body) within the allowed time."""

    code = "request_timeout"
    http_status = 408


class UnsupportedMediaType(BotError):
    code = "unsupported_media_type"
    http_status = 415


class PayloadTooLarge(BotError):
    code = "payload_too_large"
    http_status = 413


def json_response(
    data: Any, status: int = 200, headers: dict[str, str] | None = None
) -> web.Response:
    return web.Response(  # ASCII-escaped: any string a client sent (even a lone surrogate) is safe
        body=json.dumps(data).encode("ascii"),
        status=status,
        content_type="application/json",
        headers=headers,
    )


def error_response(
    status: int, error: str, details: dict[str, Any], headers: dict[str, str] | None = None
) -> web.Response:
    return json_response({"error": error, "details": details}, status, headers)


def bot_error_response(exc: BotError) -> web.Response:
    """One domain error → status and JSON, the same mapping for every endpoint."""
    details: dict[str, Any] = {"code": exc.code, "message": exc.user_message}
    headers: dict[str, str] = {}
    if isinstance(exc, InvalidRequest):
        details["field"] = exc.field
        details.update(
            (k, v) for k, v in exc.details.items() if isinstance(v, int | str) and k not in details
        )
        if isinstance(exc, InvalidModel) or exc.field == "model":
            details["model"] = exc.details.get("model")
            return error_response(400, "Invalid model", details)
        title = "Invalid prompt" if exc.field == "prompt" else "Invalid request"
        return error_response(400, title, details)
    if isinstance(exc, QuotaExceeded):
        details.update(limit=exc.limit, resets_at=exc.resets_at.isoformat())
        return error_response(403, "Quota exceeded", details)
    if isinstance(exc, ContentRefused | ContentFlagged):  # a refusal, not a failure
        details.update((k, v) for k, v in exc.details.items() if k not in details)
        return error_response(403, "Content refused", details)
    if isinstance(exc, RateLimited):
        headers["Retry-After"] = str(exc.retry_after)
        return error_response(429, "Too many requests", details, headers)
    if isinstance(exc, Busy):
        headers["Retry-After"] = "30"
        return error_response(429, "Busy", details, headers)
    if isinstance(exc, ShuttingDown):
        headers["Retry-After"] = str(exc.retry_after)
        return error_response(503, "Service unavailable", details, headers)
    if isinstance(exc, ProviderError):
        return error_response(502, "Image generation failed", details)
    if isinstance(exc, StoreError):
        return error_response(502, "Image storage failed", details)
    titles = {401: "Unauthorized", 403: "Forbidden", 404: "Not found", 408: "Request timeout",
              409: "Conflict", 413: "Payload too large", 415: "Unsupported media type",
              503: "Service unavailable"}  # fmt: skip
    status = exc.http_status if exc.http_status in titles else 500
    return error_response(status, titles.get(status, "Internal error"), details)


@web.middleware
async def errors_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except BotError as exc:
        return bot_error_response(exc)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        headers = {k: v for k, v in exc.headers.items() if k in ("Allow", "Retry-After")}
        message = exc.text if exc.text and not exc.text.startswith(f"{exc.status}:") else ""
        return error_response(
            exc.status, exc.reason, {"message": message or exc.reason}, headers or None
        )
    except ConnectionResetError:  # the client went away mid-request: nobody to answer
        log.info("client %s disconnected during %s %s", request.remote, request.method,
                 request.path)  # fmt: skip
        return error_response(400, "Client disconnected", {"message": "Disconnected."})
    except Exception:
        reference = secrets.token_hex(4)
        log.exception("unexpected error in %s %s (reference %s)", request.method,
                      request.path, reference)  # fmt: skip
        return error_response(500, "Internal error", {"reference": reference})


async def read_json(request: web.Request, limit: int = JSON_LIMIT) -> dict[str, Any]:
    """The request body as a JSON object, or a clear 4xx."""
    if request.content_type != "application/json":
        raise UnsupportedMediaType("Send a JSON body with Content-Type: application/json.")
    if request.content_length is not None and request.content_length > limit:
        raise PayloadTooLarge(f"The body is larger than {limit // 1024} KB.")
    raw = bytearray()
    while len(raw) <= limit:  # a body can arrive in many pieces: read until its end
        chunk = await request.content.read(limit + 1 - len(raw))
        if not chunk:
            break
        raw += chunk
    if len(raw) > limit:
        raise PayloadTooLarge(f"The body is larger than {limit // 1024} KB.")
    try:
        data = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        raise InvalidRequest("body", "The body is not valid JSON.") from None
    except RecursionError:
        raise InvalidRequest("body", "The body is nested too deeply.") from None
    if not isinstance(data, dict):
        raise InvalidRequest("body", "The body must be a JSON object.")
    return data
