"""The web gallery: server-rendered pages behind a signed, expiring link (see bot/gallery_links.py).

``GET /gallery?t=…&page=N`` is a grid of the link's images (prompt, model, cost, date) and its
30-day spending chart; a server link (an admin's) adds the top users and the CSV. Without a
valid link every page answers 403. Jinja2 autoescapes every user text; the pages load nothing
from elsewhere (inline CSS, no scripts, no fonts) and say so in their Content-Security-Policy.
Anonymous, so the per-address rate limit of images applies.
"""

from __future__ import annotations

import functools
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlencode

from aiohttp import web

from bot.catalog import Catalog
from bot.gallery import Spending
from bot.gallery_links import GalleryAccess, LinkRefused
from bot.money import format_usd
from bot.requests import ImageRecord
from bot.web.limits import RUNTIME_KEY, check_anonymous_rate

if TYPE_CHECKING:
    from jinja2 import Environment

PER_PAGE = 24
TOP_USERS = 10
ALT_PROMPT = 300  # characters of the prompt in an image's alt text
HEADERS = {
    "Cache-Control": "no-store",
    "Content-Security-Policy": "default-src 'none'; img-src * data:; style-src 'unsafe-inline'; "
    "base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
    "Referrer-Policy": "no-referrer",
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
}


@functools.cache
def templates() -> Environment:
    """The pages' templates, loaded on the first gallery request: Jinja2 is ~2 MB of a bot
    process that may never serve a gallery page."""
    from jinja2 import Environment, FileSystemLoader, StrictUndefined, select_autoescape

    return Environment(
        loader=FileSystemLoader(Path(__file__).parent / "templates"),
        autoescape=select_autoescape(default=True, default_for_string=True),
        undefined=StrictUndefined,
    )


def _access(request: web.Request) -> GalleryAccess:
    check_anonymous_rate(request)
    return request.app[RUNTIME_KEY].gallery.links.verify(request.query.get("t"))


def _refused(exc: LinkRefused) -> web.Response:
    body = templates().get_template("refused.html").render(message=exc.user_message)
    return web.Response(text=body, status=403, content_type="text/html", headers=HEADERS)


def _when(iso: str) -> str:
    return datetime.fromisoformat(iso).astimezone(UTC).strftime("%Y-%m-%d %H:%M UTC")


def _item(image: ImageRecord, catalog: Catalog, server: bool) -> dict[str, object]:
    prompt = image.prompt or "Uploaded image"
    alt = f"Image made from the prompt: {prompt}" if image.prompt else f"Uploaded image {image.id}"
    if len(alt) > ALT_PROMPT:
        alt = alt[: ALT_PROMPT - 1] + "…"
    return {
        "id": image.id,
        "url": image.url,
        "alt": alt,
        "width": image.width,
        "height": image.height,
        "prompt": prompt,
        "model": catalog.display_name(image.model, "—") if image.kind != "upload" else "upload",
        "cost": "free (cached)" if image.cached else format_usd(image.cost_micro_usd),
        "created_at": image.created_at,
        "date": _when(image.created_at),
        "user_id": image.user_id if server else "",
    }


def _spending(spending: Spending) -> dict[str, object]:
    report = spending.report
    return {
        "images": report.total_images,
        "total": format_usd(report.total_micro_usd),
        "average": format_usd(report.average_micro_usd),
        "first_day": spending.days[0],
        "last_day": spending.days[-1],
    }


def _page_url(token: str, page: int) -> str:
    return "/gallery?" + urlencode({"t": token, "page": page + 1})


async def gallery_page(request: web.Request) -> web.Response:
    try:
        access = _access(request)
    except LinkRefused as exc:
        return _refused(exc)
    runtime = request.app[RUNTIME_KEY]
    gallery, token = runtime.gallery, request.query["t"]
    try:
        wanted = int(request.query.get("page", "1")) - 1
    except ValueError:
        wanted = 0
    page = await gallery.page(
        access.user_id, access.guild_id, server=access.server, page=wanted, per_page=PER_PAGE
    )
    spending = await gallery.spending(access)
    signed = urlencode({"t": token})
    body = templates().get_template("gallery.html").render(
        title="Server gallery" if access.server else "Your gallery",
        subtitle=f"Server {access.guild_id}" if access.server else f"User {access.user_id}",
        expires=datetime.fromtimestamp(access.expires_at, UTC).strftime("%Y-%m-%d %H:%M UTC"),
        page=page,
        items=[_item(image, runtime.catalog, access.server) for image in page.images],
        previous_url=_page_url(token, page.page - 1) if page.has_previous else "",
        next_url=_page_url(token, page.page + 1) if page.has_next else "",
        spending=_spending(spending),
        chart_url=f"/gallery/chart.png?{signed}",
        server=access.server,
        top_users=[
            {"user_id": u.user_id, "images": u.images, "cost": format_usd(u.micro_usd)}
            for u in spending.report.users[:TOP_USERS]
        ],
        csv_url=f"/gallery/usage.csv?{signed}",
    )
    return web.Response(text=body, content_type="text/html", headers=HEADERS)


async def gallery_chart(request: web.Request) -> web.Response:
    try:
        access = _access(request)
    except LinkRefused as exc:
        return _refused(exc)
    png = await request.app[RUNTIME_KEY].gallery.chart_png(access)
    return web.Response(body=png, content_type="image/png", headers=HEADERS)


async def gallery_csv(request: web.Request) -> web.Response:
    try:
        access = _access(request)
        if not access.server:
            raise LinkRefused("The CSV is part of a server gallery link (an admin's).")
    except LinkRefused as exc:
        return _refused(exc)
    data = await request.app[RUNTIME_KEY].gallery.server_csv(access.guild_id)
    headers = {**HEADERS, "Content-Disposition": 'attachment; filename="usage.csv"'}
    return web.Response(body=data, content_type="text/csv", charset="utf-8", headers=headers)
