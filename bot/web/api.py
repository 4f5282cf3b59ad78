"""The JSON API under /api: loaded on the first API request (bot/web/routes.py), with pydantic
and the models, so a process that never serves one never holds them.

Thin handlers: they get the body already parsed with its model (bot/web/routes.py), read their
query parameters (declared in bot/web/api_context.py), call the same service methods the
Discord cogs use (same quotas, same ledger, same errors), and answer with a reply model
(bot/public.py).
"""

from __future__ import annotations

import hashlib
import uuid
from datetime import date, timedelta

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError

from bot.errors import Forbidden, IdempotencyKeyReused, InvalidRequest
from bot.library import UPLOAD_LIMIT
from bot.public import (
    BatchAccepted,
    CostReport,
    ImagePage,
    ModelList,
    TemplateList,
    Uploaded,
    public_batch,
    public_image,
    public_model,
    public_template,
    usage_totals,
)
from bot.requests import ApiKey, GenerateRequest
from bot.web.api_context import (
    COSTS_FROM,
    COSTS_SCOPE,
    COSTS_TO,
    IMAGES_BEFORE,
    IMAGES_LIMIT,
    api_of,
    is_admin,
    key_of,
    scope_of,
)
from bot.web.bodies import BatchBody, GenerateBody, TemplateBody, UploadUrlBody
from bot.web.http import PayloadTooLarge, error_response, json_response
from bot.web.params import EARLIEST

# -- images ----------------------------------------------------------------------------------


def idempotency_key(request: web.Request, key: ApiKey) -> str:
    """The client's Idempotency-Key, scoped to its API key and hashed whole (any length
    counts, every character of it); a fresh one when none was sent."""
    sent = request.headers.get("Idempotency-Key", "")
    if not sent:
        return f"api:{key.id}:{uuid.uuid4().hex}"
    return f"api:{key.id}:sha256:{hashlib.sha256(sent.encode('utf-8', 'replace')).hexdigest()}"


async def generate(request: web.Request, body: GenerateBody) -> web.Response:
    key = key_of(request)
    try:
        return await _generate(request, key, body)
    except IdempotencyKeyReused as exc:
        return error_response(409, "Idempotency-Key reused",
                              {"code": exc.code, "message": exc.user_message})  # fmt: skip


async def _generate(request: web.Request, key: ApiKey, body: GenerateBody) -> web.Response:
    result = await api_of(request).runtime.service.generate(
        GenerateRequest(
            prompt=body.prompt,
            user_id=key.user_id,
            guild_id=key.guild_id,
            model=body.model,
            template=body.template_id,
            negative_prompt=body.negative_prompt,
            width=body.width,
            height=body.height,
            seed=body.seed,
            steps=body.steps,
            image_id=body.image_id,
            enhance=bool(body.enhance),
            fresh=bool(body.fresh),
            idempotency_key=idempotency_key(request, key),
            metadata=dict(body.metadata or {}),
        )
    )
    await api_of(request).runtime.service.record_delivery(result.job_id, "api")
    return json_response(public_image(result.images[0]).to_json(), status=201)


async def list_images(request: web.Request) -> web.Response:
    limit = IMAGES_LIMIT.read(request)
    before = IMAGES_BEFORE.read(request)
    images = await api_of(request).runtime.service.user_images_page(
        key_of(request).user_id, limit=limit, before=before
    )
    next_cursor = images[-1].created_at if len(images) == limit else None
    page = ImagePage(images=[public_image(i) for i in images], next=next_cursor)
    return json_response(page.to_json())


async def get_image(request: web.Request) -> web.Response:
    key = key_of(request)
    image = await api_of(request).runtime.service.visible_image(
        request.match_info["image_id"], key.user_id, key.guild_id
    )
    return json_response(public_image(image).to_json())


async def delete_image(request: web.Request) -> web.Response:
    key = key_of(request)
    service = api_of(request).runtime.service
    image_id = request.match_info["image_id"]
    await service.visible_image(image_id, key.user_id, key.guild_id)
    deleted = await service.delete_image(
        image_id, requester_id=key.user_id, is_admin=is_admin(request, key)
    )
    return json_response(public_image(deleted).to_json())


async def upload_allowed(request: web.Request) -> None:
    """Refuse an upload past the daily allowance before reading a byte of its body."""
    key = key_of(request)
    await api_of(request).runtime.service.check_upload_allowance(key.user_id, key.guild_id)


async def upload(request: web.Request, body: UploadUrlBody | None) -> web.Response:
    """A multipart file (``body`` is None then), or the image at ``body.url``; the allowance
    was checked before the body was read (``upload_allowed``)."""
    api = api_of(request)
    key = key_of(request)
    service = api.runtime.service
    if body is None:
        data = await _multipart_file(request)
        record = await service.upload(data, user_id=key.user_id, guild_id=key.guild_id)
    else:
        record = await service.upload_from_url(body.url, user_id=key.user_id, guild_id=key.guild_id)
    uploaded = Uploaded(id=record.id, url=record.url, image=public_image(record))
    return json_response(uploaded.to_json(), 201)


async def _multipart_file(request: web.Request) -> bytes:
    try:
        return await _read_file_part(request)
    except (ValueError, HttpProcessingError):
        raise InvalidRequest("file", "The multipart body is malformed.") from None


async def _read_file_part(request: web.Request) -> bytes:
    reader = await request.multipart()
    while (part := await reader.next()) is not None:
        if getattr(part, "name", None) != "file":
            continue
        chunks, size = [], 0
        while chunk := await part.read_chunk(64 * 1024):  # type: ignore[union-attr]
            size += len(chunk)
            if size > UPLOAD_LIMIT:
                raise PayloadTooLarge("The file is larger than 10 MB.")
            chunks.append(chunk)
        return b"".join(chunks)
    raise InvalidRequest("file", "Send the image as the multipart field 'file'.")


# -- models, templates, analytics -----------------------------------------------------------


async def models(request: web.Request) -> web.Response:
    specs = api_of(request).runtime.catalog.enabled_image_models()
    return json_response(ModelList(models=[public_model(s) for s in specs]).to_json())


async def create_template(request: web.Request, body: TemplateBody) -> web.Response:
    key = key_of(request)
    template = await api_of(request).runtime.admin.create_template(
        guild_id=scope_of(key), user_id=key.user_id, **body.model_dump(exclude_none=True)
    )
    return json_response(public_template(template).to_json(), status=201)


async def list_templates(request: web.Request) -> web.Response:
    templates = await api_of(request).runtime.admin.templates(scope_of(key_of(request)))
    listed = TemplateList(templates=[public_template(t) for t in templates])
    return json_response(listed.to_json())


async def get_template(request: web.Request) -> web.Response:
    template = await api_of(request).runtime.admin.template(
        scope_of(key_of(request)), request.match_info["template_id"]
    )
    return json_response(public_template(template).to_json())


async def delete_template(request: web.Request) -> web.Response:
    key = key_of(request)
    admin = api_of(request).runtime.admin
    template = await admin.template(scope_of(key), request.match_info["template_id"])
    await admin.delete_template(
        guild_id=scope_of(key), name=template.id, user_id=key.user_id,
        is_admin=is_admin(request, key),
    )  # fmt: skip
    return json_response(public_template(template).to_json())


async def costs(request: web.Request) -> web.Response:
    """Own usage by default; ``scope=server`` gives the key's server (its admins only)."""
    key = key_of(request)
    today = date.fromisoformat(api_of(request).runtime.service.today())
    end = COSTS_TO.read(request) or today
    start = COSTS_FROM.read(request) or max(end - timedelta(days=29), EARLIEST)
    if start > end or (end - start).days > 366:
        raise InvalidRequest("from", "'from' must be on or before 'to', at most 366 days apart.")
    scope = COSTS_SCOPE.read(request)
    if scope == "server" and not (key.guild_id and is_admin(request, key)):
        raise Forbidden("Server analytics are for the server's admins.")
    report = await api_of(request).runtime.service.usage_report(
        start.isoformat(),
        end.isoformat(),
        guild_id=key.guild_id,
        user_id=None if scope == "server" else key.user_id,
    )

    cost_report = CostReport.model_validate({**usage_totals(report), "scope": scope})
    return json_response(cost_report.to_json())


# -- batches --------------------------------------------------------------------------------


async def create_batch(request: web.Request, body: BatchBody) -> web.Response:
    api = api_of(request)
    batch = await api.batches.submit(key_of(request), body.prompts, body.model, body.webhook_url)
    accepted = BatchAccepted(
        id=batch.id, status=batch.state, status_url=f"/api/batch/{batch.id}",  # type: ignore[arg-type]
        items=len(batch.items),
    )  # fmt: skip
    return json_response(accepted.to_json(), status=202)


async def get_batch(request: web.Request) -> web.Response:
    api = api_of(request)
    batch = await api.batches.get(request.match_info["batch_id"], key_of(request))
    return json_response(public_batch(batch, await api.batches.images_of(batch)).to_json())
