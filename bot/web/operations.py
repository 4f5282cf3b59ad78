"""One route of the route table (bot/web/routes.py): how it is served and what the OpenAPI
document says of it. Models are named, not imported (``"PublicImage"`` of bot/public.py,
``"GenerateBody"`` of bot/web/bodies.py), so the table, and with it the web server of a
process that never answers an API request, loads no pydantic: bot/web/openapi.py and the
API's handlers resolve the names when they are first needed."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from aiohttp import web


@dataclass(frozen=True)
class Reply:
    """One documented answer: a JSON body of ``model`` (a name in bot/public.py), or other
    ``media`` (type → schema)."""

    description: str
    model: str | None = None
    media: dict[str, dict[str, Any]] | None = None


@dataclass(frozen=True)
class Operation:
    """One route: how it is served, and everything the document says about it.

    ``handler`` takes the request, and the parsed ``body`` (a model of bot/web/bodies.py, by
    name) when the route has one; with ``multipart`` a ``multipart/form-data`` request gets
    ``None`` (it reads the file itself). ``before_body`` runs before any of the body is read
    (to refuse early).
    """

    method: Literal["GET", "POST", "DELETE"]
    path: str  # as aiohttp routes it: ``{name}`` or ``{name:regex}``
    handler: Callable[..., Awaitable[web.StreamResponse]]
    summary: str
    replies: dict[int, Reply]
    errors: tuple[int, ...] = ()
    body: str | None = None
    multipart: bool = False
    before_body: Callable[[web.Request], Awaitable[object]] | None = None
    public: bool = False  # no API key needed
    parameters: tuple[dict[str, Any], ...] = ()
    path_schemas: dict[str, dict[str, Any]] = field(default_factory=dict)
