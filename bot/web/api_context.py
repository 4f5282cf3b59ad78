"""What the route table and the API's middleware need of the API without loading its handlers:
the state kept on the app, the request's key, and the documented query parameters. Nothing here
imports pydantic (see bot/web/routes.py: the handlers load on the first API request)."""

from __future__ import annotations

from dataclasses import dataclass

from aiohttp import web

from bot.api_keys import ApiKeys
from bot.batches import BatchService
from bot.placeholders import PlaceholderService
from bot.requests import ApiKey
from bot.runtime import Runtime
from bot.server_admin import template_scope
from bot.web.limits import KeyRateLimiter
from bot.web.params import Choice, Day, Text, WholeNumber


@dataclass
class Api:
    """Everything the handlers need, kept on the app."""

    runtime: Runtime
    limiter: KeyRateLimiter

    @property
    def keys(self) -> ApiKeys:
        return self.runtime.keys

    @property
    def batches(self) -> BatchService:
        return self.runtime.batches

    @property
    def placeholders(self) -> PlaceholderService:
        return self.runtime.placeholders


API = web.AppKey("api", Api)
KEY = web.RequestKey("api_key", ApiKey)


def api_of(request: web.Request) -> Api:
    return request.app[API]


def key_of(request: web.Request) -> ApiKey:
    return request[KEY]


def scope_of(key: ApiKey) -> str:
    return template_scope(key.guild_id, key.user_id)


def is_admin(request: web.Request, key: ApiKey) -> bool:
    return key.user_id.isdigit() and int(key.user_id) in api_of(request).runtime.settings.admin_ids


IMAGES_LIMIT = WholeNumber("limit", default=25, low=1, high=100)
IMAGES_BEFORE = Text("before", "The 'next' of the previous page")
COSTS_FROM = Day("from", "First day; empty or absent: 29 days before 'to'")
COSTS_TO = Day("to", "Last day; empty or absent: today (UTC)")
COSTS_SCOPE = Choice("scope", ("user", "server"), "Your own usage, or your server's (admins)")
