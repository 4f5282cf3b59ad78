"""The route table: every HTTP route once, with its handler, its body model, its replies and
whether it needs an API key. The router, body parsing, the key check and the OpenAPI document
(``GET /api/openapi.json``) are all built from this one table.

The API's code (its handlers, the body and reply models, pydantic, the document's builder:
about 10 MB resident) loads on the first request that needs it, on a worker thread
(``imported``), so a process that only hosts images and answers /healthz and /metrics (the
Discord bot) never holds it. The table names models instead of importing them."""

from __future__ import annotations

import asyncio
import importlib
from functools import cache
from types import ModuleType
from typing import Any

from aiohttp import web

from bot.errors import ShuttingDown
from bot.web import api_context, gallery
from bot.web.hosting import healthz, metrics, serve_image
from bot.web.http import Handler, json_response, read_json
from bot.web.limits import RUNTIME_KEY
from bot.web.operations import Operation, Reply
from bot.web.placeholder import PLACEHOLDER_REDO, placeholder

_IMPORTED: dict[str, ModuleType] = {}  # a module's entry is set once its import has finished


async def imported(name: str) -> ModuleType:
    """The module ``name``, imported off the loop the first time (the API's handlers with
    pydantic take ~100 ms of CPU: too long a stall for the shard's other interactions)."""
    module = _IMPORTED.get(name)
    if module is None:
        module = _IMPORTED[name] = await asyncio.to_thread(importlib.import_module, name)
    return module


def later(name: str) -> Handler:
    """A handler of bot/web/api.py by name, called once its module is loaded."""

    async def handler(request: web.Request, *body: Any) -> web.StreamResponse:
        function = getattr(await imported("bot.web.api"), name)
        response: web.StreamResponse = await function(request, *body)
        return response

    handler.__name__ = handler.__qualname__ = name
    return handler


IMAGE_BYTES = {"image/*": {"schema": {"type": "string", "format": "binary"}}}
IDEMPOTENCY_KEY = {
    "name": "Idempotency-Key",
    "in": "header",
    "required": False,
    "description": "Retries with the same key and body get the same image; the whole key "
    "counts. The same key with a different body is a 409 (Idempotency-Key reused).",
    "schema": {"type": "string"},
}


HTML = {"text/html": {"schema": {"type": "string"}}}
GALLERY_TOKEN = {
    "name": "t", "in": "query", "required": True, "schema": {"type": "string"},
    "description": "The signed link's token, as /gallery gives it",
}  # fmt: skip
GALLERY_PAGE = {
    "name": "page", "in": "query", "required": False, "schema": {"type": "string"},
    "description": "The page number, 1 the newest; past the end the last page, not a number "
    "the first (a page of HTML never answers 400)",
}  # fmt: skip


async def openapi(request: web.Request) -> web.Response:
    await imported("bot.web.openapi")  # its builder and models: off the loop the first time
    return json_response(api_document())


ROUTES: tuple[Operation, ...] = (
    Operation(
        "GET", "/images/{image_id}/{variant}", serve_image,
        "An image from the local store: 'public' or 'w=,h=,fit='",
        {200: Reply("The image", media=IMAGE_BYTES), 304: Reply("Not modified")},
        errors=(400, 404, 429), public=True,
    ),
    Operation(
        "GET", "/healthz", healthz,
        "Ready: database reachable, migrations current, provider and store reachable",
        {200: Reply("OK", "Health"), 503: Reply("Degraded: the failed check named", "Health")},
        public=True,
    ),
    Operation(
        "GET", "/metrics", metrics, "This process's metrics in Prometheus' text format",
        {200: Reply("The metrics", media={"text/plain": {"schema": {"type": "string"}}})},
        public=True,
    ),
    Operation(
        "POST", "/api/generate", later("generate"), "Generate one image",
        {201: Reply("Created", "PublicImage")}, errors=(404, 409, 413, 415, 502),
        body="GenerateBody", parameters=(IDEMPOTENCY_KEY,),
    ),
    Operation(
        "GET", "/api/images", later("list_images"), "Your images, newest first",
        {200: Reply("OK", "ImagePage")},
        parameters=(api_context.IMAGES_LIMIT.document(), api_context.IMAGES_BEFORE.document()),
    ),
    Operation(
        "GET", "/api/images/{image_id}", later("get_image"), "One image",
        {200: Reply("OK", "PublicImage")}, errors=(404,),
    ),
    Operation(
        "DELETE", "/api/images/{image_id}", later("delete_image"),
        "Delete an image (its owner or an admin)",
        {200: Reply("OK", "PublicImage")}, errors=(404, 502),
    ),
    Operation(
        "POST", "/api/upload", later("upload"),
        "Host an image: multipart field 'file', or JSON {url}",
        {201: Reply("Created", "Uploaded")}, errors=(409, 413, 415, 502),
        body="UploadUrlBody", multipart=True, before_body=later("upload_allowed"),
    ),
    Operation(
        "GET", "/api/models", later("models"), "The models and their price per image",
        {200: Reply("OK", "ModelList")}, public=True,
    ),
    Operation(
        "POST", "/api/templates", later("create_template"), "Save a template",
        {201: Reply("Created", "PublicTemplate")}, errors=(409, 413, 415), body="TemplateBody",
    ),
    Operation(
        "GET", "/api/templates", later("list_templates"), "Templates of the key's server",
        {200: Reply("OK", "TemplateList")},
    ),
    Operation(
        "GET", "/api/templates/{template_id}", later("get_template"), "One template",
        {200: Reply("OK", "PublicTemplate")}, errors=(404,),
    ),
    Operation(
        "DELETE", "/api/templates/{template_id}", later("delete_template"),
        "Delete a template (its creator or an admin)",
        {200: Reply("OK", "PublicTemplate")}, errors=(404,),
    ),
    Operation(
        "GET", "/api/analytics/costs", later("costs"),
        "Costs between two UTC days (yours, or your server's for admins)",
        {200: Reply("OK", "CostReport")},
        parameters=(
            api_context.COSTS_FROM.document(), api_context.COSTS_TO.document(),
            api_context.COSTS_SCOPE.document(),
        ),
    ),
    Operation(
        "POST", "/api/batch/generate", later("create_batch"),
        "Generate many images; poll the batch or get a signed webhook",
        {202: Reply("Accepted", "BatchAccepted")}, errors=(413, 415), body="BatchBody",
    ),
    Operation(
        "GET", "/api/batch/{batch_id:bat_[0-9a-f]+}", later("get_batch"),
        "A batch and each item's state", {200: Reply("OK", "PublicBatch")}, errors=(404,),
    ),
    Operation(
        "GET", "/api/openapi.json", openapi, "This document",
        {200: Reply("OK", media={"application/json": {"schema": {"type": "object"}}})},
        public=True,
    ),
    Operation(
        "GET", "/{size:[0-9]+x[0-9]+}/{slug}", placeholder,
        "A placeholder image: /800x600/sunglasses-sloth, resized exactly",
        {
            200: Reply("The image", media=IMAGE_BYTES),
            400: Reply("Not a placeholder path: a page of examples",
                       media={"text/html": {"schema": {"type": "string"}}}),
        },
        errors=(401, 403, 404, 429, 502), public=True,
        parameters=(PLACEHOLDER_REDO.document(),),
        path_schemas={"size": {"type": "string", "pattern": "^[0-9]{1,5}x[0-9]{1,5}$"}},
    ),
    *(
        Operation(
            "GET", path, handler, summary,
            {200: Reply("The page", media={media: {"schema": {}}}),
             403: Reply("No valid link (missing, altered or expired)", media=HTML)},
            errors=(429,), public=True, parameters=(GALLERY_TOKEN, *extra),
        )
        for path, handler, summary, media, extra in (
            ("/gallery", gallery.gallery_page,
             "The web gallery (HTML): a link's images, page by page, and its 30 days of spending",
             "text/html", (GALLERY_PAGE,)),
            ("/gallery/chart.png", gallery.gallery_chart, "The link's 30-day spending chart",
             "image/png", ()),
            ("/gallery/usage.csv", gallery.gallery_csv,
             "Every charge of the server in 30 days (a server link only)", "text/csv", ()),
        )
    ),
)  # fmt: skip
PUBLIC_API = frozenset(op.path for op in ROUTES if op.public and op.path.startswith("/api/"))


@cache
def api_document() -> dict[str, Any]:
    """The OpenAPI document of these routes (built once; it never changes while running)."""
    from bot.web.openapi import openapi_document

    return openapi_document(ROUTES)


def endpoint(op: Operation) -> Handler:
    """The route's handler, given its body parsed with the documented model."""
    body = op.body
    if body is None:
        return op.handler

    async def with_body(request: web.Request) -> web.StreamResponse:
        if op.before_body is not None:
            await op.before_body(request)
        if op.multipart and request.content_type == "multipart/form-data":
            return await op.handler(request, None)
        bodies = await imported("bot.web.bodies")
        parsed = bodies.parse_body(getattr(bodies, body), await read_json(request))
        return await op.handler(request, parsed)

    return with_body


def add_routes(app: web.Application) -> None:
    for op in ROUTES:
        app.router.add_route(op.method, op.path, endpoint(op))


READS = frozenset({"GET", "HEAD"})


@web.middleware
async def stopping_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """While the process stops (SIGTERM), nothing new starts: every request but a read (GET,
    HEAD) is a 503 with ``Retry-After``, before its key is checked; reads, such as the images
    of results still being delivered, are served until the listener closes. A request whose
    job the stop cut short (refunded) gets the same 503, not a dropped connection."""
    service = request.app[RUNTIME_KEY].service
    if request.method not in READS and service.closing:
        raise ShuttingDown("This server is restarting; try again in a moment.")
    try:
        return await handler(request)
    except asyncio.CancelledError:
        task = asyncio.current_task()
        if task is None or not service.cut_short(task):
            raise
        task.uncancel()
        raise ShuttingDown(
            "This server is restarting and the request did not finish in time: nothing was "
            "charged; try again in a moment."
        ) from None


@web.middleware
async def auth_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Every /api route but the public ones needs a Bearer key; each key is rate-limited."""
    if request.path.startswith("/api/") and request.path not in PUBLIC_API:
        state = api_context.api_of(request)
        header = request.headers.get("Authorization", "")
        token = header[7:].strip() if header[:7].lower() == "bearer " else None
        key = await state.keys.authenticate(token)
        await state.limiter.check(key.id)
        request[api_context.KEY] = key
    return await handler(request)
