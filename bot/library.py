"""The image library: what a user's images are and what may be done with them.

List, show, fetch bytes, delete, and upload (bytes, or a URL fetched with ``bot.outbound``'s
checks). Every upload is validated, reserved against the user's daily upload allowance, stored,
recorded and settled; a record that cannot be written takes its bytes back out of the store.
Fronts reach the store only through here: they ask for bytes to attach or a file to print, and
the store says whether it has them (``public``, ``hosted_here``, ``local_path``).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import httpx

from bot import imaging
from bot.backends import Backends
from bot.catalog import Cost
from bot.deletion import ImageDeletion
from bot.errors import BotError, NotFound
from bot.idempotency import check_same_request, upload_fingerprint
from bot.image_records import StoredBytes, image_record
from bot.lease_fence import LeaseFence
from bot.ledger import ImageRecord, Ledger, Limits
from bot.ledger.ledger import DuplicateRequest, NewJob
from bot.ledger.records import new_id
from bot.outbound import fetch_bytes
from bot.presentation import shows_fresh_urls
from bot.stores.base import ImageStore, store_metadata

log = logging.getLogger(__name__)

UNLIMITED = 2**62
UPLOAD_LIMIT = 10 * 1024 * 1024  # what Cloudflare Images accepts for one upload


class ImageLibrary:
    def __init__(
        self,
        ledger: Ledger,
        backends: Backends,
        *,
        upload_micro_usd: int = 0,
        http: httpx.AsyncClient | None = None,
        allow_private_urls: bool = False,
    ) -> None:
        self.ledger = ledger
        self.backends = backends
        self.upload_micro_usd = upload_micro_usd  # what the store charges to keep one upload
        self.http = http  # for uploads by URL; None where nothing fetches (some tests)
        self.allow_private_urls = allow_private_urls
        self._deletion = ImageDeletion(ledger, backends)
        self.fence = LeaseFence(ledger, backends)  # when this process outlived its lease

    @property
    def store(self) -> ImageStore:
        return self.backends.store

    # -- reading --------------------------------------------------------------------------------

    @shows_fresh_urls
    async def get_image(self, image_id: str) -> ImageRecord:
        """A live image; NotFound when it does not exist or was deleted."""
        image = await self.ledger.get_image(image_id)
        if image.is_deleted:
            raise NotFound("That image was deleted.")
        return image

    @shows_fresh_urls
    async def visible_image(self, image_id: str, user_id: str, guild_id: str) -> ImageRecord:
        """An image this user may use: their own, or a shared one made in the same server (a
        private result is its owner's alone)."""
        image = await self.ledger.get_image(image_id)
        mine = image.user_id == user_id
        same_guild = bool(guild_id) and image.guild_id == guild_id and not image.private
        if image.is_deleted or not (mine or same_guild):
            raise NotFound(f"No image with id {image_id}.")
        return image

    @shows_fresh_urls
    async def user_images(
        self, user_id: str, prefix: str = "", limit: int = 25
    ) -> list[ImageRecord]:
        """A user's live images and uploads, newest first (for pickers and listings)."""
        return await self.ledger.list_images(user_id, limit=limit, prefix=prefix)

    @shows_fresh_urls
    async def user_images_page(
        self, user_id: str, *, limit: int, before: str | None
    ) -> list[ImageRecord]:
        """A page of a user's live images, newest first; ``before`` is the last created_at."""
        return await self.ledger.list_images(user_id, limit=limit, before=before)

    async def image_bytes(self, image: ImageRecord) -> bytes:
        """The original bytes of a recorded image."""
        return await self.backends.get(image.storage_key)

    async def bytes_to_attach(self, image: ImageRecord) -> bytes | None:
        """The bytes when the image's URL cannot be fetched from the internet (so a front
        attaches them); None when the URL is enough."""
        if self.store.public:
            return None
        return await self.image_bytes(image)

    def local_file(self, image: ImageRecord) -> Path | None:
        """The file on this machine holding the image, if the store keeps one."""
        return self.store.local_path(image.storage_key)

    @property
    def hosted_here(self) -> bool:
        """True when the built-in web server serves the images (``GET /images/…``)."""
        return self.store.hosted_here

    async def hosted_original(self, image_id: str) -> bytes:
        """What the built-in web server serves; NotFound when not held here (or not at all)."""
        if not self.store.hosted_here:
            raise NotFound("Images are hosted elsewhere.")
        return await self.backends.get(image_id)

    async def still_hosted(self, image_id: str) -> bool:
        """False once the image is gone from the store (a cached variant must not outlive it)."""
        return await self.store.find(image_id) is not None

    # -- deleting -------------------------------------------------------------------------------

    @shows_fresh_urls
    async def delete_image(
        self, image_id: str, *, requester_id: str, is_admin: bool = False
    ) -> ImageRecord:
        """Take the image down: its URL dies; cache hits sharing its bytes keep a copy of their
        own, unless an admin removes someone else's image (moderation: every copy goes)."""
        return await self._deletion.delete(image_id, requester_id=requester_id, is_admin=is_admin)

    # -- uploading ------------------------------------------------------------------------------

    async def upload_from_url(
        self,
        url: str,
        *,
        user_id: str,
        guild_id: str = "",
        idempotency_key: str | None = None,
        role_ids: Sequence[str] = (),
    ) -> ImageRecord:
        """Fetch an image from an address a user gave (public addresses only unless
        ALLOW_PRIVATE_URLS, bounded in size) and upload it; refused early when the user's
        allowance has no room left, before anything is fetched."""
        await self.check_upload_allowance(user_id, guild_id, role_ids)
        if self.http is None:
            raise BotError("Uploads by URL are not available here.")
        data, _ = await fetch_bytes(
            self.http, url, max_bytes=UPLOAD_LIMIT, allow_private=self.allow_private_urls
        )
        return await self.upload(
            data, user_id=user_id, guild_id=guild_id, idempotency_key=idempotency_key,
            role_ids=role_ids,
        )  # fmt: skip

    @shows_fresh_urls
    async def upload(
        self,
        data: bytes,
        *,
        user_id: str,
        guild_id: str = "",
        idempotency_key: str | None = None,
        metadata: dict[str, str] | None = None,
        role_ids: Sequence[str] = (),
    ) -> ImageRecord:
        """Validate (magic bytes and a real decode), reserve it against the user's daily upload
        allowance (and its storage price), host and record an image."""
        fingerprint = upload_fingerprint(data, user_id, guild_id)
        if idempotency_key:
            previous = await self.ledger.job_by_key(idempotency_key)
            if previous is not None:
                check_same_request(previous, fingerprint)
                if previous.state == "settled":
                    return (await self.ledger.images_for_job(previous.id))[0]
        info = await asyncio.to_thread(imaging.validate_upload, data)
        image_id = new_id("img")
        price = Cost(self.upload_micro_usd, 0)
        limits = await self._upload_limits(user_id, guild_id, role_ids)
        try:
            job = await self.ledger.reserve(
                NewJob("upload", user_id, guild_id, price, 0, None, idempotency_key,
                       {"slots": [{"id": image_id}], "metadata": metadata or {}},
                       fingerprint=fingerprint, bytes=len(data)),
                limits,
            )  # fmt: skip
        except DuplicateRequest as duplicate:
            check_same_request(duplicate.job, fingerprint)
            return (await self.ledger.images_for_job(duplicate.job.id))[0]
        try:
            await self.ledger.set_state(job.id, "storing", [image_id])
            stored = await self.backends.put(
                image_id, data, info.content_type,
                store_metadata(image_id, user_id, guild_id, None, None),
            )  # fmt: skip
            held = StoredBytes(stored, self.store.name, info.content_type, info.width,
                               info.height, len(data))  # fmt: skip
            record = image_record(
                job, image_id, held, cost=price, seed_shown=False, created_at=self.ledger.now_iso()
            )
            recorded = await self.record_or_unstore(record)
        except BaseException as exc:
            code = exc.code if isinstance(exc, BotError) else "internal"
            await self.ledger.refund(job.id, code)
            raise
        unrecorded = [] if recorded else [record]  # the job was taken over (lease_fence)
        return (await self.fence.settle(job, limits, {0: record}, unrecorded, 0, price))[0]

    async def check_upload_allowance(
        self, user_id: str, guild_id: str = "", role_ids: Sequence[str] = ()
    ) -> None:
        """Refuse early (QuotaExceeded) when not even a tiny upload would fit today, so a
        front need not read or fetch a file it cannot accept. ``upload`` checks exactly."""
        limits = await self._upload_limits(user_id, guild_id, role_ids)
        refusal = await self.ledger.upload_refusal(user_id, limits, 1)
        if refusal is not None:
            raise refusal

    async def _upload_limits(
        self, user_id: str, guild_id: str, role_ids: Sequence[str] = ()
    ) -> Limits:
        """The user's upload allowance and money budgets; uploads draw no images or Neurons."""
        limits = await self.ledger.limits_for(user_id, guild_id, role_ids)
        return replace(limits, user_images=UNLIMITED, milli_neurons=UNLIMITED)

    async def record_or_unstore(self, record: ImageRecord) -> bool:
        """Record a stored image of a job this process runs; False, the bytes kept, if the job
        is no longer its own (``bot.lease_fence`` closes it). If the record cannot be written,
        take the bytes back out of the store, so nothing stored is ever left without a record."""
        try:
            return await self.ledger.add_job_image(record)
        except BaseException:
            try:
                await self.backends.delete(record.storage_key)
            except Exception:  # crash recovery finds it through the job's planned ids
                log.warning("could not remove unrecorded image %s from the store", record.id)
            raise
