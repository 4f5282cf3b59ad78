"""Records as fronts show them: every image URL computed at the moment it is shown.

A signed Cloudflare Images URL carries its own expiry, so a URL kept from the upload would stop
working after a week. The service hands out records only through ``shows_fresh_urls``, which
makes each record's ``url`` again from its storage key (the stored column is kept for old rows,
not relied on); ``presented`` does the same for one record.
"""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable
from dataclasses import replace
from typing import Concatenate, ParamSpec, Protocol, TypeVar, cast

from bot.ledger import ImageRecord
from bot.requests import GenerationResult
from bot.stores.base import ImageStore


class _HasStore(Protocol):
    @property
    def store(self) -> ImageStore: ...


P = ParamSpec("P")
T = TypeVar("T")
S = TypeVar("S", bound=_HasStore)


def presented(image: ImageRecord, store: ImageStore) -> ImageRecord:
    """The record with a URL made now (signed now, with a signing key). An image of another
    store (the backend was switched since) keeps the URL it was recorded with."""
    if image.store != store.name:
        return image
    return replace(image, url=store.url(image.storage_key))


def _with_fresh_urls(value: T, store: ImageStore) -> T:
    if isinstance(value, ImageRecord):
        return cast(T, presented(value, store))
    if isinstance(value, GenerationResult):
        return cast(T, replace(value, images=[presented(i, store) for i in value.images]))
    if isinstance(value, list):
        return cast(T, [presented(i, store) if isinstance(i, ImageRecord) else i for i in value])
    return value


def shows_fresh_urls(
    method: Callable[Concatenate[S, P], Awaitable[T]],
) -> Callable[Concatenate[S, P], Awaitable[T]]:
    """Decorate a service method that returns records (one, a list, or a GenerationResult)."""

    @functools.wraps(method)
    async def wrapper(self: S, /, *args: P.args, **kwargs: P.kwargs) -> T:
        return _with_fresh_urls(await method(self, *args, **kwargs), self.store)

    return wrapper
