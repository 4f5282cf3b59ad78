"""The provider and store this bot runs on, shared by every part of the service.

One mutable holder, so that every part (the generation pipeline, the image library, deletion)
always uses the same pair, and replacing one (tests and benchmarks do) reaches all of them.
Calls that move image bytes go through it, timed into the runtime's metrics
(``imagebot_backend_seconds``), whichever provider or store is in place.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from bot.catalog import ModelSpec
from bot.metrics import Metrics
from bot.providers.base import GeneratedImage, ImageProvider, ImageRequest, TextCompletion
from bot.stores.base import ImageStore, StoredImage


@dataclass
class Backends:
    provider: ImageProvider
    store: ImageStore
    metrics: Metrics = field(default_factory=Metrics)

    async def generate(self, request: ImageRequest) -> GeneratedImage:
        with self.metrics.timed("provider", "generate"):
            return await self.provider.generate(request)

    async def complete(
        self, model: ModelSpec, system: str, user: str, *, max_tokens: int
    ) -> TextCompletion:
        with self.metrics.timed("provider", "complete"):
            return await self.provider.complete(model, system, user, max_tokens=max_tokens)

    async def put(
        self, image_id: str, data: bytes, content_type: str, metadata: dict[str, Any]
    ) -> StoredImage:
        with self.metrics.timed("store", "put"):
            return await self.store.put(image_id, data, content_type, metadata)

    async def get(self, key: str) -> bytes:
        with self.metrics.timed("store", "get"):
            return await self.store.get(key)

    async def delete(self, key: str) -> None:
        with self.metrics.timed("store", "delete"):
            await self.store.delete(key)
