"""The grid of a multi-image result, composed off the event loop, a few at a time.

The grid is a picture shown once in a Discord message, not an image of the library: it is not
stored, recorded or charged. Its sources are read back from the store (one file read on the
local store, one API call each on Cloudflare Images) and composed on the default executor,
the pool generation's own image work (the local renderer, the local store) runs on; the
variant pool stays for strangers' requests. At most ``slots`` grids are in the making at once,
sources included, so memory stays bounded however many results finish together.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from bot import imaging
from bot.ledger import ImageRecord
from bot.library import ImageLibrary

GRID_SLOTS = 2


class GridComposer:
    def __init__(self, library: ImageLibrary, *, slots: int = GRID_SLOTS) -> None:
        self.library = library
        self._slots = asyncio.Semaphore(slots)

    async def compose(
        self, images: Sequence[ImageRecord], *, max_bytes: int = imaging.GRID_MAX_BYTES
    ) -> imaging.Grid:
        """The numbered grid of 2 to 4 images, in their order (InvalidImage if one of them
        cannot be decoded; NotFound if the store no longer holds one)."""
        async with self._slots:
            sources = await asyncio.gather(*(self.library.image_bytes(i) for i in images))
            return await asyncio.to_thread(imaging.compose_grid, sources, max_bytes=max_bytes)
