"""Cloudflare Images as an ImageStore.

Without a signing key every image is uploaded under our own ``image_id`` (a custom id), so crash
recovery can look it up by id and a retried upload that already landed is recognised (409) and
reused. With a signing key images require signed URLs, which Cloudflare does not allow for
custom ids: the upload gets a Cloudflare id, our ``image_id`` goes into the metadata, and ``find``
searches the newest images for it. Failures surface as ``StoreError``; a missing image as
``NotFound``.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import time
from collections.abc import Callable, Collection, Mapping
from pathlib import Path
from typing import Any, Literal
from urllib.parse import quote

import httpx

from bot.cloudflare_api import CloudflareAPI, store_error
from bot.errors import Conflict, NotFound, StoreError
from bot.stores.base import StoredImage
from bot.validation import METADATA_LIMIT

log = logging.getLogger(__name__)

_SHORT_VALUE = 32
_FIND_PAGES = 3
_FIND_PAGE_SIZE = 100


def _encode(meta: Mapping[str, Any]) -> str:
    return json.dumps(meta, ensure_ascii=False, separators=(",", ":"))


def _size(meta: Mapping[str, Any]) -> int:
    return len(_encode(meta).encode("utf-8"))


def fit_metadata(
    metadata: Mapping[str, Any], limit: int = METADATA_LIMIT, keep: Collection[str] = ()
) -> str:
    """Metadata as a JSON string whose UTF-8 encoding is at most ``limit`` bytes.

    Shortens the longest text values first (to 32 characters with an ellipsis), then drops
    whole entries, largest first; keys in ``keep`` are touched only as a last resort. Other JSON
    values (numbers, booleans, objects such as a user's own metadata) are never altered: they
    are kept exactly or dropped whole.
    """
    items = {str(k): v for k, v in metadata.items()}
    while (excess := _size(items) - limit) > 0:
        candidates = [k for k in items if k not in keep] or list(items)
        if not candidates:
            break
        texts = [k for k in candidates if isinstance(items[k], str)]
        longest = max(texts, key=lambda k: len(items[k]), default=None)
        value = items[longest] if longest is not None else ""
        if longest is not None and len(value) > _SHORT_VALUE:
            # Each character removed saves at least one byte; the ellipsis costs three.
            cut = max(_SHORT_VALUE - 1, len(value) - excess - 3)
            items[longest] = value[:cut] + "…"
        else:
            del items[max(candidates, key=lambda k: _size({k: items[k]}))]
    return _encode(items)


def _api_key(key: str) -> str:
    return quote(key, safe="/")


class CloudflareImagesStore:
    """ImageStore over Cloudflare Images, delivering from imagedelivery.net (or a proxy)."""

    name = "cloudflare"
    public = True
    hosted_here = False

    def local_path(self, key: str) -> Path | None:
        return None  # the bytes live at Cloudflare

    def __init__(
        self,
        api: CloudflareAPI,
        *,
        account_hash: str,
        delivery_url: str = "https://imagedelivery.net",
        signing_key: str | None = None,
        signed_url_ttl_seconds: int = 7 * 24 * 3600,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._api = api
        self._account_hash = account_hash
        self._delivery_url = delivery_url.rstrip("/")
        self._signing_key = signing_key or None
        self._ttl = signed_url_ttl_seconds
        self._clock = clock

    def __repr__(self) -> str:
        signed = "signed" if self._signing_key else "unsigned"
        return f"CloudflareImagesStore(delivery_url={self._delivery_url!r}, {signed})"

    async def _request(
        self,
        method: str,
        path: str,
        *,
        allow: tuple[type[NotFound | Conflict], ...] = (),
        expect: Literal["any", "json"] = "json",
        **kwargs: Any,
    ) -> httpx.Response:
        """One store call; a 404/409 the caller did not ``allow`` becomes a StoreError."""
        try:
            return await self._api.request(
                method, path, errors=store_error, expect=expect, **kwargs
            )
        except (NotFound, Conflict) as exc:
            if isinstance(exc, allow):
                raise
            raise StoreError(
                f"The image store rejected the request ({exc.http_status} {exc.code})."
            ) from None

    async def put(
        self, image_id: str, data: bytes, content_type: str, metadata: dict[str, Any]
    ) -> StoredImage:
        meta = dict(metadata)
        extension = content_type.rsplit("/", 1)[-1] or "bin"
        files: dict[str, Any] = {"file": (f"{image_id}.{extension}", data, content_type)}
        if self._signing_key:
            meta = {"image_id": image_id, **{k: v for k, v in meta.items() if k != "image_id"}}
            files["requireSignedURLs"] = (None, "true")
        else:
            files["id"] = (None, image_id)
        files["metadata"] = (None, fit_metadata(meta, keep={"image_id"}))
        try:
            response = await self._request("POST", "/images/v1", files=files, allow=(Conflict,))
        except Conflict:
            if self._signing_key:
                raise StoreError("The image store refused the upload (conflict).") from None
            # An earlier attempt of this very upload landed (e.g. its answer timed out).
            log.info("Image %s is already in Cloudflare Images; reusing it", image_id)
            return StoredImage(key=image_id, url=self.url(image_id))
        result = response.json().get("result")
        key = result.get("id") if isinstance(result, dict) else None
        if not isinstance(key, str) or not key:
            raise StoreError("The image store sent a malformed answer to an upload.")
        return StoredImage(key=key, url=self.url(key))

    async def get(self, key: str) -> bytes:
        response = await self._request(
            "GET", f"/images/v1/{_api_key(key)}/blob", allow=(NotFound,), expect="any"
        )
        return response.content

    async def delete(self, key: str) -> None:
        try:
            await self._request("DELETE", f"/images/v1/{_api_key(key)}", allow=(NotFound,))
        except NotFound:
            log.debug("Image %s was already gone from Cloudflare Images", key)

    async def find(self, image_id: str) -> str | None:
        if not self._signing_key:
            try:
                response = await self._request(
                    "GET", f"/images/v1/{_api_key(image_id)}", allow=(NotFound,)
                )
            except NotFound:
                return None
            result = response.json().get("result")
            found = result.get("id") if isinstance(result, dict) else None
            return found if isinstance(found, str) and found else image_id
        return await self._find_in_listing(image_id)

    async def _find_in_listing(self, image_id: str) -> str | None:
        """Signed uploads have Cloudflare ids: look for our id in the newest images' metadata."""
        token: str | None = None
        for _ in range(_FIND_PAGES):
            params: dict[str, str | int] = {"per_page": _FIND_PAGE_SIZE, "sort_order": "desc"}
            if token:
                params["continuation_token"] = token
            response = await self._request("GET", "/images/v2", params=params)
            result = response.json().get("result")
            if not isinstance(result, dict):
                raise StoreError("The image store sent a malformed image list.")
            for image in result.get("images") or []:
                if isinstance(image, dict) and _meta(image).get("image_id") == image_id:
                    found = image.get("id")
                    return found if isinstance(found, str) else None
            token = result.get("continuation_token")
            if not isinstance(token, str) or not token:
                return None
        return None

    def url(self, key: str, variant: str = "public") -> str:
        """``{delivery}/{hash}/{key}/{variant}``, signed with ``exp``/``sig`` when we have a key."""
        path = f"/{self._account_hash}/{key.replace('%', '%25')}/{variant}"
        if not self._signing_key:
            return f"{self._delivery_url}{path}"
        expires = int(self._clock()) + self._ttl
        to_sign = f"{path}?exp={expires}"
        signature = hmac.new(
            self._signing_key.encode("utf-8"), to_sign.encode("utf-8"), hashlib.sha256
        ).hexdigest()
        return f"{self._delivery_url}{to_sign}&sig={signature}"

    async def check(self) -> None:
        await self._request("GET", "/images/v1/stats", attempts=1)


def _meta(image: Mapping[str, Any]) -> Mapping[str, Any]:
    """An image's metadata: Cloudflare answers with ``meta`` (docs also show ``metadata``)."""
    for name in ("meta", "metadata"):
        value = image.get(name)
        if isinstance(value, str):
            try:
                value = json.loads(value)
            except ValueError:
                continue
        if isinstance(value, dict):
            return value
    return {}
