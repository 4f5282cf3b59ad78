"""The gallery: a user's (or, for admins, a server's) live images page by page, the last 30
days of spending, and the signed links to the web gallery.

Front-agnostic: the Discord cog pages it with buttons, the web server renders it as HTML.
Deleted images are never listed; every URL is made when shown (see bot/presentation.py).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from urllib.parse import urlencode

from bot.gallery_links import GalleryAccess, GalleryLinks
from bot.ledger import ImageRecord, Ledger, UsageReport
from bot.presentation import presented
from bot.reports import day_range, usage_chart, usage_csv
from bot.stores.base import ImageStore

CHART_DAYS = 30
MAX_PER_PAGE = 48


@dataclass(frozen=True)
class GalleryPage:
    images: list[ImageRecord]
    page: int  # from 0
    pages: int  # at least 1, even when there is nothing to show
    total: int

    @property
    def has_previous(self) -> bool:
        return self.page > 0

    @property
    def has_next(self) -> bool:
        return self.page + 1 < self.pages


@dataclass(frozen=True)
class Spending:
    report: UsageReport
    days: list[str]


class GalleryService:
    def __init__(
        self, ledger: Ledger, store: ImageStore, links: GalleryLinks, base_url: str
    ) -> None:
        self.ledger = ledger
        self.store = store
        self.links = links
        self.base_url = base_url.rstrip("/")

    def link(self, user_id: str, guild_id: str, *, server: bool = False) -> str:
        """The private web gallery address for this view (the caller checked the right to it)."""
        token = self.links.token(user_id, guild_id, server=server)
        return f"{self.base_url}/gallery?{urlencode({'t': token})}"

    async def page(
        self, user_id: str, guild_id: str, *, server: bool, page: int, per_page: int
    ) -> GalleryPage:
        """Page ``page`` (from 0, clamped to the last) of a user's images anywhere, or with
        ``server`` of everyone's images in ``guild_id``."""
        per_page = max(1, min(per_page, MAX_PER_PAGE))
        owner, where = (None, guild_id) if server else (user_id, None)
        page = max(0, page)
        while True:
            images, total = await self.ledger.gallery_images(
                user_id=owner, guild_id=where, limit=per_page, offset=page * per_page
            )
            pages = max(1, -(-total // per_page))
            if page < pages:
                break
            page = pages - 1  # past the end (images were deleted since): the last page
        shown = [presented(image, self.store) for image in images]
        return GalleryPage(shown, page, pages, total)

    async def spending(self, access: GalleryAccess) -> Spending:
        """The last 30 UTC days of settled charges in this view."""
        days = day_range(self.ledger.today(), CHART_DAYS)
        if access.server:
            report = await self.ledger.report(days[0], days[-1], guild_id=access.guild_id)
        else:
            report = await self.ledger.report(days[0], days[-1], user_id=access.user_id)
        return Spending(report, days)

    async def chart_png(self, access: GalleryAccess) -> bytes:
        """The /usage chart of this view's 30 days, drawn off the event loop."""
        spending = await self.spending(access)
        return await asyncio.to_thread(usage_chart, spending.report, spending.days)

    async def server_csv(self, guild_id: str) -> bytes:
        """Every settled charge of the server in the last 30 days (the /usage-admin CSV)."""
        days = day_range(self.ledger.today(), CHART_DAYS)
        return usage_csv(await self.ledger.settled_jobs(days[0], days[-1], guild_id=guild_id))
