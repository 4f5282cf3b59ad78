"""The store protocol: permanent hosting of image bytes behind a URL.

Two implementations: Cloudflare Images (``cloudflare.py``) and the embedded local store
(``local.py``) served by the built-in web server. Keys are the store's own ids for an image.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol


@dataclass(frozen=True)
class StoredImage:
    key: str
    url: str


class ImageStore(Protocol):
    name: str
    # True when the URLs it hands out can be fetched from the internet (Discord can embed them).
    public: bool
    # True when the built-in web server serves its bytes (``GET /images/…``).
    hosted_here: bool

    async def put(
        self, image_id: str, data: bytes, content_type: str, metadata: dict[str, Any]
    ) -> StoredImage:
        """Store bytes under our ``image_id`` (img_…); metadata is a small JSON object (≤ 1024
        bytes; a store may drop what does not fit)."""
        ...

    async def get(self, key: str) -> bytes:
        """The original bytes; ``bot.errors.NotFound`` when the store does not hold the key."""
        ...

    async def delete(self, key: str) -> None:
        """Remove the image. Deleting what is already gone is not an error."""
        ...

    async def find(self, image_id: str) -> str | None:
        """The key under which our ``image_id`` was stored, if it was (crash recovery)."""
        ...

    def url(self, key: str, variant: str = "public") -> str:
        """The delivery URL of a variant ('public' or 'w=…,h=…,fit=…'), computed now from the key:
        a signed URL is valid from this call, so call it whenever a URL is shown, never store it
        for later."""
        ...

    async def check(self) -> None:
        """Cheap reachability check; raises ``bot.errors.StoreError`` if down."""
        ...

    def local_path(self, key: str) -> Path | None:
        """The file on this machine holding the bytes, or None for a store that keeps them
        elsewhere (the CLI prints it so an offline user can open the image)."""
        ...


def store_metadata(
    image_id: str,
    user_id: str,
    guild_id: str,
    model: str | None,
    prompt: str | None,
    user_metadata: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """What a store keeps next to the bytes: whose image it is, never the prompt itself, and
    the user's own metadata (any JSON object) under ``metadata``."""
    metadata: dict[str, Any] = {"image_id": image_id, "user": user_id, "guild": guild_id}
    if model:
        metadata["model"] = model
    if prompt:
        metadata["prompt_sha256"] = hashlib.sha256(prompt.encode()).hexdigest()[:32]
    if user_metadata:
        metadata["metadata"] = dict(user_metadata)
    return metadata
