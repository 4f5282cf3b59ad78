"""The embedded local store: files under DATA_DIR, served by the built-in web server.

Keys are our image ids (``img_`` + hex), checked against a strict pattern before any path is
built, so no key can reach outside the folder.
"""

from __future__ import annotations

import asyncio
import ipaddress
import re
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from bot.errors import NotFound, StoreError
from bot.stores.base import StoredImage

KEY_PATTERN = re.compile(r"^img_[0-9a-f]{20}$")


def is_public_url(url: str) -> bool:
    """False for loopback, private and link-local hosts that Discord cannot fetch from."""
    host = urlsplit(url).hostname or ""
    if host == "localhost" or host.endswith((".local", ".internal", ".lan")):
        return False
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return "." in host
    return address.is_global


class LocalImageStore:
    name = "local"
    hosted_here = True

    def __init__(self, root: Path, public_base_url: str) -> None:
        self.root = root
        self.base_url = public_base_url.rstrip("/")
        self.public = is_public_url(self.base_url)

    def path_for(self, key: str) -> Path:
        if not KEY_PATTERN.match(key):
            raise NotFound("No such image.")
        return self.root / key[4:6] / key

    def local_path(self, key: str) -> Path | None:
        return self.path_for(key).resolve()

    async def put(
        self, image_id: str, data: bytes, content_type: str, metadata: dict[str, Any]
    ) -> StoredImage:
        path = self.path_for(image_id)
        try:
            await asyncio.to_thread(_write_atomically, path, data)
        except OSError as exc:
            raise StoreError("Could not save the image (local storage failed).") from exc
        return StoredImage(key=image_id, url=self.url(image_id))

    async def get(self, key: str) -> bytes:
        path = self.path_for(key)
        try:
            return await asyncio.to_thread(path.read_bytes)
        except FileNotFoundError:
            raise NotFound("No such image.") from None
        except OSError as exc:
            raise StoreError("Could not read the image from local storage.") from exc

    async def delete(self, key: str) -> None:
        try:
            await asyncio.to_thread(self.path_for(key).unlink, missing_ok=True)
        except NotFound:
            return
        except OSError as exc:
            raise StoreError("Could not delete the image from local storage.") from exc

    async def find(self, image_id: str) -> str | None:
        try:
            exists = await asyncio.to_thread(self.path_for(image_id).is_file)
        except NotFound:
            return None
        return image_id if exists else None

    def url(self, key: str, variant: str = "public") -> str:
        return f"{self.base_url}/images/{key}/{variant}"

    async def check(self) -> None:
        try:
            await asyncio.to_thread(self.root.mkdir, parents=True, exist_ok=True)
        except OSError as exc:
            raise StoreError("Local image folder is not writable.") from exc


def _write_atomically(path: Path, data: bytes) -> None:
    """Write then rename: a crash never leaves a partial file under the real name. (No fsync:
    like the ledger's WAL at synchronous=NORMAL, this guards against crashes, not power loss.)"""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_suffix(".part")
    temporary.write_bytes(data)
    temporary.replace(path)
