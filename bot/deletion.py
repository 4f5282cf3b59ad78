"""Deleting an image takes down every way to reach its bytes through that image.

A cache hit is the requester's own free record pointing at the bytes of the image it matched,
so several live records can share one storage key, and with it one URL. A delete therefore:

- **by the owner** (or an admin deleting their own image): if other live records share the
  bytes, the bytes are first copied to a fresh storage key, those records are pointed at the
  copy (their own new URL), and only then is the original key deleted from the store. The
  deleted image's URL dies on either store (Cloudflare Images purges it everywhere); the other
  owners keep their pictures, and their access only.
- **by a moderator** (an admin deleting someone else's image): the content itself is taken
  down: the key is deleted from the store and every record that shares it is marked deleted.

The record is marked deleted only once its key is gone from the store, so a store failure or
a crash midway never leaves a "deleted" image whose URL still works: at worst the record stays
live (its picture possibly already gone), and deleting it again finishes the job. Deletes run
one at a time in the process.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import replace

from bot.backends import Backends
from bot.errors import Forbidden, NotFound
from bot.ledger import ImageRecord, Ledger
from bot.ledger.records import new_id
from bot.stores.base import ImageStore, StoredImage, store_metadata

log = logging.getLogger(__name__)


class ImageDeletion:
    def __init__(self, ledger: Ledger, backends: Backends) -> None:
        self.ledger = ledger
        self.backends = backends  # read at each use: the store may be swapped (tests)
        self._one_at_a_time = asyncio.Lock()

    @property
    def store(self) -> ImageStore:
        return self.backends.store

    async def delete(self, image_id: str, *, requester_id: str, is_admin: bool) -> ImageRecord:
        async with self._one_at_a_time:
            image = await self.ledger.get_image(image_id)
            if image.is_deleted:
                raise NotFound("That image was already deleted.")
            owner = image.user_id == requester_id
            if not owner and not is_admin:
                raise Forbidden("Only the person who made this image or an admin can delete it.")
            copy = await self._rehome_the_others(image) if owner else None
            await self.backends.delete(image.storage_key)
            if copy is not None:  # a cache hit recorded while the bytes were being copied
                await self.ledger.move_storage(image.storage_key, copy.key, copy.url,
                                              except_id=image.id)  # fmt: skip
            if owner:
                await self.ledger.mark_deleted(image.id)
            else:
                taken = await self.ledger.mark_deleted_stored_at(image.storage_key)
                log.info("moderation: image %s deleted with %d record(s) sharing it",
                         image.id, taken)  # fmt: skip
            return replace(image, is_deleted=True)

    async def _rehome_the_others(self, image: ImageRecord) -> StoredImage | None:
        """Give the live records sharing ``image``'s bytes a copy at a key of their own."""
        others = [
            other
            for other in await self.ledger.live_images_stored_at(image.storage_key)
            if other.id != image.id
        ]
        if not others:
            return None
        heir = others[0]
        data = await self.backends.get(image.storage_key)
        copy = await self.backends.put(
            new_id("img"),
            data,
            image.content_type,
            store_metadata(
                heir.id, heir.user_id, heir.guild_id, heir.model, heir.prompt, heir.metadata
            ),
        )
        moved = await self.ledger.move_storage(image.storage_key, copy.key, copy.url,
                                              except_id=image.id)  # fmt: skip
        log.info("image %s deleted; its bytes live on for %d other record(s)", image.id, moved)
        return copy
