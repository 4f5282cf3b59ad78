"""The placeholder images at /{W}x{H}/{slug}: public, served by every web server (no pydantic:
they are no API request, see bot/web/routes.py)."""

from __future__ import annotations

from html import escape

from aiohttp import web

from bot.errors import InvalidRequest, Unauthorized
from bot.placeholders import parse_placeholder
from bot.web.api_context import api_of
from bot.web.http import bot_error_response
from bot.web.limits import check_anonymous_rate
from bot.web.params import Flag

PLACEHOLDER_REDO = Flag("redo", "Generate again (needs an API key)")


def placeholder_help(message: str) -> web.Response:
    examples = ["800x600/sunglasses-sloth", "400x400/happy-robot", "1200x630/misty-mountains"]
    items = "".join(f'<li><a href="/{e}">/{e}</a></li>' for e in examples)
    page = (
        "<!doctype html><html><head><meta charset='utf-8'><title>Placeholder images</title>"
        f"</head><body><h1>Placeholder images</h1><p>{escape(message)}</p>"
        "<p>Ask for <code>/WIDTHxHEIGHT/what-to-draw</code>, sides 16 to 4096, the name in "
        "lowercase words joined by dashes:</p>"
        f"<ul>{items}</ul></body></html>"
    )
    return web.Response(text=page, status=400, content_type="text/html")


async def placeholder(request: web.Request) -> web.StreamResponse:
    api = api_of(request)
    redo = PLACEHOLDER_REDO.read(request)
    if not redo:
        check_anonymous_rate(request)
    try:
        width, height, prompt = parse_placeholder(
            request.match_info["size"], request.match_info["slug"], api.runtime.variants.bounds
        )
    except InvalidRequest as exc:
        return placeholder_help(exc.user_message)
    redo_by = None
    if redo:
        header = request.headers.get("Authorization", "")
        token = header[7:].strip() if header[:7].lower() == "bearer " else None
        try:
            redo_by = await api.keys.authenticate(token)
        except Unauthorized as exc:
            return bot_error_response(exc)
        await api.limiter.check(redo_by.id)
    slug = request.match_info["slug"]
    image = await api.placeholders.image_for(slug, prompt, redo_by=redo_by)
    data, content_type = await api.placeholders.render(image, width, height)
    return web.Response(
        body=data,
        content_type=content_type,
        headers={"Cache-Control": "public, max-age=86400", "X-Image-Id": image.id},
    )
