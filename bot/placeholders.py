"""The placeholder service (the seeds' "Placeholder Zoo"): ``/{W}x{H}/{slug}`` → an image.

The slug becomes a prompt (enhanced, as in the seed); the image is generated once per slug and
served resized to exactly W×H (``fit=cover``) for every size, so varying the size costs nothing.
Anonymous generations draw on the placeholder user's own daily quota (PLACEHOLDER_DAILY_IMAGES,
may be 0); ``?redo`` regenerates and needs an API key, whose user pays.
"""

from __future__ import annotations

import re

from bot import imaging
from bot.errors import InvalidRequest, NotFound
from bot.ledger import ImageRecord, Ledger
from bot.ledger.records import ApiKey
from bot.requests import GenerateRequest
from bot.service import ImageService
from bot.single_flight import SingleFlight
from bot.stores.base import ImageStore
from bot.variants import VariantRenderer

PLACEHOLDER_USER = "placeholder"
MIN_SIDE, MAX_SIDE = 16, 4096
SLUG = re.compile(r"^[a-z0-9]+(?:[-_][a-z0-9]+){0,30}$")
SIZE = re.compile(r"^([0-9]{1,5})x([0-9]{1,5})$")


def parse_placeholder(
    size: str, slug: str, bounds: imaging.VariantBounds = imaging.DEFAULT_BOUNDS
) -> tuple[int, int, str]:
    """(width, height, prompt) from the two path segments, or InvalidRequest.

    The size obeys the same bounds as every rendered variant (each side, all pixels).
    """
    match = SIZE.match(size)
    if match is None:
        raise InvalidRequest("size", "The size must look like 800x600.")
    width, height = int(match[1]), int(match[2])
    top = min(MAX_SIDE, bounds.max_side)
    if not (MIN_SIDE <= width <= top and MIN_SIDE <= height <= top):
        raise InvalidRequest("size", f"Width and height must be {MIN_SIDE} to {top} pixels.")
    if width * height > bounds.max_pixels:
        raise InvalidRequest(
            "size", f"Width × height must be at most {bounds.max_pixels:,} pixels."
        )
    if len(slug) > 200 or not SLUG.match(slug):
        raise InvalidRequest(
            "slug", "The name must be lowercase words joined by dashes, like sunglasses-sloth."
        )
    prompt = re.sub(r"[-_]+", " ", slug)
    if len(prompt) < 3:
        raise InvalidRequest("slug", "The name must be at least 3 characters.")
    return width, height, prompt


class PlaceholderService:
    def __init__(
        self, service: ImageService, ledger: Ledger, store: ImageStore, variants: VariantRenderer
    ) -> None:
        self.service = service
        self.ledger = ledger
        self.store = store
        self.variants = variants
        self._generations: SingleFlight[str, ImageRecord] = SingleFlight()

    async def set_daily_quota(self, daily_images: int) -> None:
        """Anonymous placeholders are one user with its own daily limit."""
        await self.ledger.set_user_quota("", PLACEHOLDER_USER, daily_images, None)

    async def image_for(self, slug: str, prompt: str, *, redo_by: ApiKey | None) -> ImageRecord:
        """The slug's image: from the cache, or generated once (concurrent misses share it)."""
        if redo_by is None:
            image_id = await self.ledger.placeholder(slug)
            if image_id is not None:
                try:
                    return await self.service.get_image(image_id)
                except NotFound:
                    pass  # deleted since: make a new one
            return await self._generations.run(slug, lambda: self._generate(slug, prompt, None))
        return await self._generations.lead(slug, lambda: self._generate(slug, prompt, redo_by))

    async def _generate(self, slug: str, prompt: str, redo_by: ApiKey | None) -> ImageRecord:
        result = await self.service.generate(
            GenerateRequest(
                prompt=prompt,
                user_id=redo_by.user_id if redo_by else PLACEHOLDER_USER,
                guild_id=redo_by.guild_id if redo_by else "",
                enhance=True,
                fresh=redo_by is not None,
                metadata={"placeholder": slug},
            )
        )
        image = result.images[0]
        await self.ledger.set_placeholder(slug, image.id)
        return image

    async def render(self, image: ImageRecord, width: int, height: int) -> tuple[bytes, str]:
        """The image resized to exactly W×H, on the variant pool, within its bounds, cached."""
        variant = imaging.parse_variant(f"w={width},h={height},fit=cover", max_side=MAX_SIDE)
        key = (image.storage_key, variant.name)
        cached = self.variants.cached(key)
        if cached is not None:
            return cached
        original = await self.store.get(image.storage_key)
        return await self.variants.render(key, original, variant)
