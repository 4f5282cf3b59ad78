"""A fake Discord (REST + gateway websocket) on 127.0.0.1 for end-to-end tests of the bot.

The real, unpatched discord.py client talks to it over TCP: ``patched_discord_endpoints`` points
``Route.BASE`` and ``DiscordWebSocket.DEFAULT_GATEWAY`` at it, ``BotHarness`` starts a bot and
waits for READY + command sync. Tests then dispatch interactions (``slash``, ``autocomplete``,
``click``, ``submit_modal``); each returns a ``FakeInteraction`` recording everything the bot did
for it (callback, followups, edits, deletes, files, embeds, buttons, modal) with monotonic
timestamps. Messages the bot posts itself land in ``channel_messages[channel_id]`` and
``dm_messages[user_id]``.

Copied from real Discord at its edges (see /work/shared/reference/discord-protocol.md):
- JSON answers are exactly ``application/json``; a second acknowledgement is refused (40060); the
  first followup after a defer edits the "thinking" message and keeps the defer's visibility.
- An interaction token lives ``token_lifetime`` seconds (15 minutes) from dispatch: after that, or
  after ``FakeInteraction.expire()``, every webhook call answers 401 50027. Unknown webhook 404
  10015, deleted message 404 10008. ``FakeInteraction.calls_after_dead`` counts webhook calls made
  after the token's first 401/404; ``invalid_requests`` counts 401/403/429 answers (Discord's
  10,000 per 10 minutes ban counter).
- Rate limits, fixed windows like Discord's, with real headers (``X-RateLimit-Limit/Remaining/
  Reset/Reset-After/Bucket/Scope``, ``Via``; 429 bodies with ``retry_after`` and ``global:
  false``): ``webhook_rate`` per interaction token over its followups/edits/fetches/deletes
  (default 5 per 2 s), ``channel_rate`` over message creates and edits in one channel, webhook
  and bot routes and ephemeral messages together (default 50 per 10 s; Discord does not
  document it). ``None`` disables
  either. ``force_429(count, retry_after)`` answers the next ``count`` webhook/channel requests
  429. Interaction callbacks are not limited.
- Message limits: content 2,000; 10 embeds; title 256, description 4,096, 25 fields of name 256
  and value 1,024, footer 2,048, author 256, 6,000 over all embeds of a message (400 50035); empty
  message 50006; files up to ``attachment_size_limit`` each and ``request_size_limit`` (25 MiB)
  per request (413 40005); 25 autocomplete choices with names and values of 1-100 characters.
- Channels carry Discord's age-restricted flag (``FakeChannel.nsfw``) in GUILD_CREATE and in
  each interaction's ``channel`` object; threads carry none (they follow their parent).
- Channel messages need ``FakeChannel.can_send`` (else 403 50013); DMs need
  ``FakeUser.accepts_dms`` (else 403 50007). ``delete_message`` is a moderator deleting one.
- Mentions: each message records the ``allowed_mentions`` it was sent with and ``mentions``, the
  user ids its content would actually ping under Discord's rules.
- Commands: re-synced commands keep their ids; ``default_member_permissions`` hide a command
  from members lacking them ("0": admins only); ``contexts`` (0 guild, 1 bot DM, 2 private
  channel; default all) and ``integration_types`` (0 guild install, 1 user install; default
  guild install only, as this fake application is configured) say where it is offered.
  ``slash``/``autocomplete`` raise ``CommandHidden`` where Discord would not offer the command.
- Modals: callback 9 only answers a command or a component (40004 otherwise), checked like
  Discord (title 1-45, 1-5 rows of one text input each, labels 1-45, lengths 0-4000);
  ``submit_modal`` sends the MODAL_SUBMIT (type 5) with the message of the clicked button.
- Optional: ``ack_deadline=3.0`` makes interactions acknowledged later than that unknown (10062).
- Sharding: ``GET /gateway/bot`` recommends ``recommended_shards`` (with a session_start_limit);
  IDENTIFY may carry ``shard: [id, count]`` (absent: ``[0, 1]``). Each connection gets only its
  shard's guilds, ``(guild_id >> 22) % count`` (READY, GUILD_CREATE, interactions); DMs go to
  shard 0. A shard outside ``0 ≤ id < count`` is closed with 4010 (Invalid shard); more than
  ``max_guilds_per_shard`` (2,500) guilds on one shard is closed with 4011 (Sharding required).
  ``FakeInteraction.shard`` is the shard id it was sent to.

Fixtures ``fake_discord`` and ``bot_harness``: ``pytest_plugins = ("tests.fakes.discord",)``.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import itertools
import json
import math
import mimetypes
import re
import resource
import secrets
import time
from collections import defaultdict
from collections.abc import AsyncIterator, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, TypedDict, TypeVar, Unpack, cast

import discord
import pytest
import yarl
from aiohttp import BodyPartReader, WSMsgType, web
from discord.gateway import DiscordWebSocket
from discord.http import Route

T = TypeVar("T")
BotT = TypeVar("BotT", bound=discord.Client)

FAKE_TOKEN = "MTIz.fake-discord-bot-token.test"
EPHEMERAL, LOADING = 1 << 6, 1 << 7  # message flags
ADMINISTRATOR, MANAGE_GUILD = 1 << 3, 1 << 5
MEMBER_PERMISSIONS = discord.Permissions(
    view_channel=True,
    send_messages=True,
    embed_links=True,
    attach_files=True,
    read_message_history=True,
    use_application_commands=True,
    add_reactions=True,
).value
ADMIN_PERMISSIONS = MEMBER_PERMISSIONS | MANAGE_GUILD
BOT_PERMISSIONS = MEMBER_PERMISSIONS | discord.Permissions(manage_messages=True).value
_DISCORD_EPOCH_MS = 1_420_070_400_000
MIB = 1024 * 1024
TOKEN_LIFETIME = 15 * 60.0  # seconds an interaction token works, from the interaction's creation
REQUEST_SIZE_LIMIT = 25 * MIB  # files in one request
WEBHOOK_RATE = (5, 2.0)  # requests per window (seconds) per interaction token
CHANNEL_RATE = (50, 10.0)  # message creates + edits per window in one channel
GUILD, BOT_DM, PRIVATE_CHANNEL = 0, 1, 2  # interaction contexts
GUILD_INSTALL, USER_INSTALL = 0, 1  # integration types
_MENTION = re.compile(r"<@!?(\d+)>")
_ROLE_MENTION = re.compile(r"<@&(\d+)>")
_FILE_FIELD = re.compile(r"files\[(\d+)\]")
_BODY: web.RequestKey[Any] = web.RequestKey("body", object)  # parsed JSON / payload_json
_UPLOADS: web.RequestKey[dict[int, _Upload]] = web.RequestKey("uploads", dict)
_RATE_HEADERS: web.RequestKey[dict[str, str]] = web.RequestKey("rate_headers", dict)


class Who(TypedDict, total=False):
    """Who acts, and where: defaults are ``member`` in ``guild.channel`` with their permissions."""

    user: FakeUser
    guild: FakeGuild | None
    channel: FakeChannel | None
    permissions: int | str  # the member's permission bits, e.g. str(ADMIN_PERMISSIONS)
    dm: bool  # a DM with the bot instead of a guild channel (context 1)
    private: bool  # a group DM or another user's DM, through a user install (context 2)
    user_install: bool  # through the user's own install of the app (integration type 1)
    locale: str


class CommandHidden(PermissionError):
    """Discord would not offer the command here: the user lacks its default_member_permissions,
    or its contexts / integration types exclude this place or install."""


class _Rejected(Exception):
    """An error answer Discord would give: HTTP status, JSON error code, message."""

    def __init__(self, status: int, code: int, text: str) -> None:
        super().__init__(f"{status} {code}: {text}")
        self.status, self.code, self.text = status, code, text


def json_response(data: Any, status: int = 200) -> web.Response:
    """JSON with exactly ``application/json``: discord.py treats anything else as text."""
    return web.Response(
        body=json.dumps(data).encode(), status=status, content_type="application/json"
    )


def error_response(status: int, code: int, text: str) -> web.Response:
    return json_response({"code": code, "message": text}, status)


def now_iso() -> str:
    return datetime.now(UTC).isoformat()


# -- users, guilds, messages -----------------------------------------------------------------


@dataclass
class FakeUser:
    id: int
    username: str
    permissions: int = MEMBER_PERMISSIONS  # default for interactions; per call overridable
    role_ids: list[int] = field(default_factory=list)
    bot: bool = False
    accepts_dms: bool = True  # False: the bot's DMs answer 403 50007

    def payload(self) -> dict[str, Any]:
        name = self.username
        return {"id": str(self.id), "username": name, "global_name": name, "discriminator": "0"} | {
            "avatar": None,
            "bot": self.bot,
            "public_flags": 0,
        }

    def member_payload(self, permissions: int | None = None) -> dict[str, Any]:
        member: dict[str, Any] = {"user": self.payload(), "roles": [str(r) for r in self.role_ids]}
        member |= {"flags": 0, "joined_at": "2024-01-01T00:00:00+00:00", "nick": None}
        member |= dict.fromkeys(("deaf", "mute", "pending"), False)
        if permissions is not None:
            member["permissions"] = str(permissions)
        return member


@dataclass
class FakeChannel:
    """A guild text channel, a thread in one (type 11, ``parent_id``), or (type 1, no guild)
    the bot's DM channel with ``recipient``. ``nsfw`` is Discord's age-restricted flag: sent
    for text channels (in GUILD_CREATE and in each interaction's ``channel``); a thread has no
    flag of its own, it follows its parent, as in Discord."""

    id: int
    name: str
    guild_id: int | None
    type: int = 0  # GUILD_TEXT
    position: int = 0
    can_send: bool = True  # False: the bot's messages here answer 403 50013
    recipient: FakeUser | None = None
    parent_id: int | None = None  # a thread's channel
    nsfw: bool = False  # age-restricted (set before the bot connects: GUILD_CREATE carries it)

    def payload(self, permissions: int | None = None) -> dict[str, Any]:
        if self.recipient is not None:
            recipients = [self.recipient.payload()]
            return {
                "id": str(self.id),
                "type": 1,
                "recipients": recipients,
                "last_message_id": None,
            }
        data: dict[str, Any] = {"id": str(self.id), "type": self.type, "name": self.name}
        data |= {"position": self.position, "guild_id": str(self.guild_id)}
        data |= {"permission_overwrites": [], "rate_limit_per_user": 0}
        data |= dict.fromkeys(("parent_id", "topic", "last_message_id"))
        if self.type == 11:  # PUBLIC_THREAD: discord.py builds a Thread from these
            data |= {"parent_id": str(self.parent_id), "owner_id": str(self.guild_id)}
            data |= {"member_count": 1, "message_count": 0, "flags": 0}
            data["thread_metadata"] = {"archived": False, "auto_archive_duration": 1440} | {
                "archive_timestamp": "2024-01-01T00:00:00+00:00", "locked": False}
        else:
            data["nsfw"] = self.nsfw
        if permissions is not None:
            data["permissions"] = str(permissions)
        return data


@dataclass
class FakeGuild:
    id: int
    name: str
    owner_id: int
    channels: list[FakeChannel] = field(default_factory=list)
    roles: list[dict[str, Any]] = field(default_factory=list)
    members: list[FakeUser] = field(default_factory=list)
    # Commands this server's admins opened to every member (Server Settings > Integrations),
    # overriding their default_member_permissions: the bot's own checks must still hold.
    opened_commands: set[str] = field(default_factory=set)

    @property
    def channel(self) -> FakeChannel:
        return self.channels[0]

    def payload(self) -> dict[str, Any]:
        """The GUILD_CREATE payload."""
        data: dict[str, Any] = {"id": str(self.id), "name": self.name, "icon": None}
        data |= {"owner_id": str(self.owner_id), "unavailable": False, "large": False}
        data |= {"member_count": len(self.members), "preferred_locale": "en-US"}
        data |= {key: [] for key in ("features", "emojis", "stickers", "presences")}
        data |= {"voice_states": [], "roles": self.roles}
        data["channels"] = [c.payload() for c in self.channels if c.type != 11]
        data["threads"] = [c.payload() for c in self.channels if c.type == 11]
        data["members"] = [m.member_payload() for m in self.members]
        return data


@dataclass
class SentFile:
    """A file the bot uploaded (or a test attached), served back at ``url``."""

    id: int
    filename: str
    data: bytes
    content_type: str
    url: str
    description: str | None = None

    def attachment(self) -> dict[str, Any]:
        data: dict[str, Any] = {"id": str(self.id), "filename": self.filename}
        data |= {"size": len(self.data), "url": self.url, "proxy_url": self.url}
        return data | {"content_type": self.content_type, "description": self.description}


def walk_components(components: Sequence[Any]) -> Iterator[dict[str, Any]]:
    """Every component, rows and containers included, depth first."""
    for component in components:
        if isinstance(component, dict):
            yield component
            yield from walk_components(component.get("components") or [])
            yield from walk_components([component.get("accessory")])


@dataclass
class FakeMessage:
    """A message as the fake holds it now (edits are applied in place)."""

    id: int
    channel_id: int
    guild_id: int | None
    author: dict[str, Any]
    type: int = 0
    content: str = ""
    embeds: list[dict[str, Any]] = field(default_factory=list)
    components: list[dict[str, Any]] = field(default_factory=list)
    flags: int = 0
    files: list[SentFile] = field(default_factory=list)
    poll: dict[str, Any] | None = None
    interaction_id: int | None = None
    metadata: dict[str, Any] | None = None
    created: str = field(default_factory=now_iso)
    edited: str | None = None
    deleted: bool = False
    allowed_mentions: dict[str, Any] | None = None  # as the bot last sent it (None: not sent)
    mentions: list[int] = field(default_factory=list)  # user ids the content would ping
    mention_roles: list[int] = field(default_factory=list)
    mention_everyone: bool = False  # @everyone / @here would ping

    @property
    def ephemeral(self) -> bool:
        return bool(self.flags & EPHEMERAL)

    @property
    def loading(self) -> bool:
        """Still the "thinking…" placeholder of a deferred reply."""
        return bool(self.flags & LOADING)

    @property
    def buttons(self) -> list[dict[str, Any]]:
        return [c for c in walk_components(self.components) if c.get("type") == 2]

    @property
    def custom_ids(self) -> list[str]:
        return [c["custom_id"] for c in walk_components(self.components) if "custom_id" in c]

    def payload(self) -> dict[str, Any]:
        data: dict[str, Any] = {"id": str(self.id), "type": self.type, "author": self.author}
        data |= {"channel_id": str(self.channel_id), "content": self.content, "flags": self.flags}
        data |= {"embeds": self.embeds, "components": self.components}
        data["attachments"] = [f.attachment() for f in self.files]
        data["mentions"] = [_mentioned_user(user_id) for user_id in self.mentions]
        data["mention_roles"] = [str(role_id) for role_id in self.mention_roles]
        data |= {"timestamp": self.created, "edited_timestamp": self.edited}
        data |= {"mention_everyone": self.mention_everyone, "tts": False, "pinned": False}
        if self.guild_id is not None:
            data["guild_id"] = str(self.guild_id)
        if self.interaction_id is not None:  # sent through the interaction webhook
            data["webhook_id"] = data["application_id"] = self.author["id"]
        if self.metadata is not None:
            data["interaction_metadata"] = self.metadata
        if self.poll is not None:
            data["poll"] = self.poll
        return data


@dataclass
class Event:
    """One thing the bot did for an interaction: ``callback``, ``followup``, ``edit``, ``fetch``,
    ``delete``, ``rejected`` (the fake answered with an error; ``error`` says which) or
    ``rate_limited`` (answered 429; discord.py usually waits and retries)."""

    kind: str
    at: float  # time.monotonic() on arrival
    body: dict[str, Any]  # the JSON (or multipart payload_json) the bot sent
    files: list[SentFile] = field(default_factory=list)  # uploaded by this request
    message: FakeMessage | None = None
    error: str | None = None

    @property
    def type(self) -> int | None:
        """The callback type: 4 message, 5 defer, 6 deferred update, 7 update, 8 choices."""
        return self.body.get("type")

    @property
    def flags(self) -> int:
        data = (self.body.get("data") or {}) if self.kind == "callback" else self.body
        return int(data.get("flags") or 0)

    @property
    def ephemeral(self) -> bool:
        """Whether the bot *asked* for ephemeral (see ``message.ephemeral`` for the outcome)."""
        return bool(self.flags & EPHEMERAL)


class _Waitable:
    """Something tests can wait on: ``_notify()`` wakes every ``wait_until``."""

    def __init__(self) -> None:
        self._changed = asyncio.Event()

    def _notify(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    async def wait_until(self, check: Callable[[], T | None], timeout: float = 5.0) -> T:  # noqa: ASYNC109
        """Wait until ``check()`` returns something truthy, and return it."""
        async with asyncio.timeout(timeout):
            while not (result := check()):
                await self._changed.wait()
        return result


class FakeInteraction(_Waitable):
    """An interaction the fake dispatched, and everything the bot did for it, in order."""

    def __init__(self, payload: dict[str, Any], source: FakeMessage | None = None) -> None:
        super().__init__()
        self.payload = payload
        self.id = int(payload["id"])
        self.token: str = payload["token"]
        self.type: int = payload["type"]
        self.source = source  # the message holding the clicked component
        self.dispatched_at = 0.0
        self.events: list[Event] = []
        self.callback: Event | None = None
        self.original: FakeMessage | None = None
        self.followups: list[FakeMessage] = []
        self.choices: list[dict[str, Any]] | None = None  # autocomplete answer
        self.modal: dict[str, Any] | None = None  # the modal it answered with (callback 9)
        self.expired = False  # expire(): the token is dead whatever its age
        self.dead = False  # a webhook call on this token was answered 401 or 404
        self.calls_after_dead = 0  # webhook calls made on the token after that answer
        self.shard: int | None = None  # the shard id of the connection it was sent to

    def expire(self) -> None:
        """End the token's life now: its webhook calls answer 401 50027 from here on."""
        self.expired = True

    @property
    def channel_id(self) -> int:
        return int(self.payload["channel_id"])

    def __repr__(self) -> str:
        return f"<FakeInteraction id={self.id} type={self.type} events={len(self.events)}>"

    def _record(self, event: Event) -> None:
        self.events.append(event)
        if event.kind == "callback":
            self.callback = event
        self._notify()

    @property
    def callback_type(self) -> int | None:
        return self.callback.type if self.callback else None

    @property
    def callback_at(self) -> float | None:
        return self.callback.at if self.callback else None

    @property
    def latency(self) -> float | None:
        """Seconds from the gateway send to the callback's arrival."""
        return None if self.callback is None else self.callback.at - self.dispatched_at

    @property
    def response_message_id(self) -> int | None:
        return self.original.id if self.original else None

    @property
    def messages(self) -> list[FakeMessage]:
        """The visible messages: original (after edits) and followups, not deleted."""
        seen: dict[int, FakeMessage] = {}
        for message in [self.original, *self.followups]:
            if message is not None and not message.deleted:
                seen.setdefault(message.id, message)
        return list(seen.values())

    @property
    def files(self) -> list[SentFile]:
        return [f for m in self.messages for f in m.files]

    @property
    def embeds(self) -> list[dict[str, Any]]:
        return [e for m in self.messages for e in m.embeds]

    @property
    def custom_ids(self) -> list[str]:
        return [c for m in self.messages for c in m.custom_ids]

    @property
    def rejected(self) -> list[Event]:
        return [e for e in self.events if e.kind == "rejected"]

    async def wait_for_callback(self, timeout: float = 5.0) -> Event:  # noqa: ASYNC109
        return await self.wait_until(lambda: self.callback, timeout)

    async def wait_for_message(
        self,
        predicate: Callable[[FakeMessage], bool] | None = None,
        timeout: float = 5.0,  # noqa: ASYNC109
    ) -> FakeMessage:
        """The first visible message matching ``predicate`` (default: not "thinking…")."""
        check = predicate or (lambda m: not m.loading)
        return await self.wait_until(lambda: next(filter(check, self.messages), None), timeout)


@dataclass
class RequestRecord:
    method: str
    path: str
    query: dict[str, str]
    at: float
    body: Any
    files: list[tuple[str, int]]  # (filename, size)
    status: int = 0
    peer: Any = None  # the client's (host, port): one per TCP connection, to count reconnects


@dataclass
class _Upload:
    filename: str
    data: bytes
    content_type: str


@dataclass
class _Window:
    """A fixed-window rate limit like Discord's: at most ``limit`` requests per window."""

    bucket: str  # sent as X-RateLimit-Bucket
    limit: int = 0
    remaining: int = 0
    resets_at: float = 0.0  # time.monotonic() when the window ends

    def has_room(self, rate: tuple[int, float], now: float) -> bool:
        """Whether one more request fits (a new window starts when the last one has ended)."""
        if now >= self.resets_at:
            self.limit, self.remaining, self.resets_at = rate[0], rate[0], now + rate[1]
        return self.remaining > 0

    def headers(self, now: float) -> dict[str, str]:
        reset_after = max(self.resets_at - now, 0.0)
        return {
            "X-RateLimit-Limit": str(self.limit),
            "X-RateLimit-Remaining": str(self.remaining),
            "X-RateLimit-Reset": f"{time.time() + reset_after:.3f}",
            "X-RateLimit-Reset-After": f"{reset_after:.3f}",
            "X-RateLimit-Bucket": self.bucket,
            "X-RateLimit-Scope": "user",
        }


class _GatewaySession:
    """One client websocket; sends are serialised so sequence numbers stay in order."""

    def __init__(self, ws: web.WebSocketResponse) -> None:
        self.ws = ws
        self.seq = 0
        self.session_id: str | None = None
        self.shard: tuple[int, int] | None = None  # (id, count) once identified or resumed
        self.dispatched: list[str] = []  # event names sent, in order (GUILD_CREATE:<id> too)
        self._lock = asyncio.Lock()

    async def send(self, payload: dict[str, Any]) -> None:
        async with self._lock:
            await self.ws.send_str(json.dumps(payload))

    async def dispatch(self, event: str, data: dict[str, Any]) -> None:
        async with self._lock:
            self.seq += 1
            await self.ws.send_str(json.dumps({"op": 0, "t": event, "s": self.seq, "d": data}))
            self.dispatched.append(f"{event}:{data['id']}" if event == "GUILD_CREATE" else event)

    @property
    def live(self) -> bool:
        return self.shard is not None and not self.ws.closed


# -- the fake ---------------------------------------------------------------------------------


class FakeDiscord(_Waitable):
    """Discord's REST API and gateway for one bot application, on an ephemeral local port.

    Default world: ``guild`` with one text channel (``guild.channel``), ``admin`` (Manage Guild)
    and ``member`` users. Logs: ``requests`` (every REST call), ``unhandled`` (routes the fake
    lacks), ``errors`` (fake bugs, answered 400), ``interactions``, ``messages``, ``synced``.
    """

    def __init__(
        self,
        *,
        token: str = FAKE_TOKEN,
        token_lifetime: float = TOKEN_LIFETIME,
        webhook_rate: tuple[int, float] | None = WEBHOOK_RATE,
        channel_rate: tuple[int, float] | None = CHANNEL_RATE,
        attachment_size_limit: int = 10 * MIB,
        request_size_limit: int = REQUEST_SIZE_LIMIT,
        ack_deadline: float | None = None,
        heartbeat_interval_ms: int = 41_250,
        recommended_shards: int = 1,
        max_guilds_per_shard: int = 2500,
    ) -> None:
        super().__init__()
        self.token = token
        # All of these may be changed while the fake runs; a rate change starts with the next
        # window of each bucket.
        self.token_lifetime = token_lifetime
        self.webhook_rate = webhook_rate
        self.channel_rate = channel_rate
        self.attachment_size_limit = attachment_size_limit
        self.request_size_limit = request_size_limit
        self.ack_deadline = ack_deadline
        self.heartbeat_interval_ms = heartbeat_interval_ms
        self.recommended_shards = recommended_shards
        self.max_guilds_per_shard = max_guilds_per_shard
        self._ids = itertools.count(1)
        self.application_id = self.snowflake()
        self.bot_user = FakeUser(self.snowflake(), "ImageBot", BOT_PERMISSIONS, bot=True)
        self.owner = FakeUser(self.snowflake(), "app-owner")
        self.admin = FakeUser(self.snowflake(), "admin", ADMIN_PERMISSIONS)
        self.member = FakeUser(self.snowflake(), "member", MEMBER_PERMISSIONS)
        self.users = [self.admin, self.member]
        self.guilds: list[FakeGuild] = []
        self.guild = self.add_guild("Test Server")
        self.requests: list[RequestRecord] = []
        self.unhandled: list[RequestRecord] = []
        self.errors: list[str] = []
        self.gateway_received: list[dict[str, Any]] = []  # client frames except heartbeats
        self.interactions: dict[int, FakeInteraction] = {}
        self.messages: dict[int, FakeMessage] = {}  # every message, by id
        self.channel_messages: defaultdict[int, list[FakeMessage]] = defaultdict(list)
        self.dm_messages: defaultdict[int, list[FakeMessage]] = defaultdict(list)  # by user id
        self.invalid_requests = 0  # 401, 403 and 429 answers
        self.rate_limited = 0  # 429 answers
        self.blobs: dict[int, SentFile] = {}
        self.synced: dict[int | None, dict[str, dict[str, Any]]] = {}  # guild id|None → name → cmd
        self.sync_count = self.identify_count = 0
        self.base_url = ""
        self._by_token: dict[str, FakeInteraction] = {}
        self._windows: dict[str, _Window] = {}  # "token:…" / "channel:…" → its rate window
        self._forced_429: list[float] = []  # retry_after of each forced 429 still to answer
        self._dm_channels: dict[int, FakeChannel] = {}  # user id → the bot's DM with them
        self._private_channels: set[int] = set()  # user-install contexts the bot is not in
        self._sessions: list[_GatewaySession] = []
        self._resumable: dict[str, tuple[int, tuple[int, int]]] = {}  # closed id → (seq, shard)
        self._runner: web.AppRunner | None = None

    def snowflake(self, shard: tuple[int, int] | None = None) -> int:
        """A new id; with ``shard`` (id, count), one whose guild would be on that shard."""
        ms = int(time.time() * 1000) - _DISCORD_EPOCH_MS
        if shard is not None:
            ms += (shard[0] - ms) % shard[1]  # a few ms ahead at most, still unique (low bits)
        return (ms << 22) | (next(self._ids) & 0x3FFFFF)

    def add_guild(
        self,
        name: str,
        channels: Sequence[str] = ("general",),
        *,
        shard: tuple[int, int] | None = None,
    ) -> FakeGuild:
        """A guild with text channels, @everyone and Admin roles, and every known user; on
        ``shard`` (id, count) when given (its id decides it: ``(id >> 22) % count``)."""
        guild = FakeGuild(self.snowflake(shard), name, owner_id=self.owner.id)
        guild.channels = [
            FakeChannel(self.snowflake(), ch, guild.id, 0, i) for i, ch in enumerate(channels)
        ]
        admin_role = self.snowflake()
        guild.roles = [_role(guild.id, "@everyone", MEMBER_PERMISSIONS, 0)]
        guild.roles.append(_role(admin_role, "Admin", ADMIN_PERMISSIONS, 1))
        self.admin.role_ids.append(admin_role)
        guild.members = [*self.users, self.bot_user]
        self.guilds.append(guild)
        return guild

    def add_role(self, guild: FakeGuild, name: str, *members: FakeUser) -> dict[str, Any]:
        """A role (no permissions) held by ``members``; pass it as a role option's value.
        Add roles before the bot connects: discord.py learns them from GUILD_CREATE."""
        role = _role(self.snowflake(), name, 0, len(guild.roles))
        guild.roles.append(role)
        for member in members:
            member.role_ids.append(int(role["id"]))
        return role

    def add_channel(self, guild: FakeGuild, name: str, *, nsfw: bool = False) -> FakeChannel:
        """Another text channel (``nsfw``: age-restricted). Add it before the bot connects:
        discord.py learns channels from GUILD_CREATE."""
        channel = FakeChannel(self.snowflake(), name, guild.id, 0, len(guild.channels), nsfw=nsfw)
        guild.channels.append(channel)
        return channel

    def add_thread(self, parent: FakeChannel, name: str) -> FakeChannel:
        """A public thread in ``parent`` (its messages go to the thread's own id)."""
        thread = FakeChannel(self.snowflake(), name, parent.guild_id, 11, parent_id=parent.id)
        guild = next(g for g in self.guilds if g.id == parent.guild_id)
        guild.channels.append(thread)
        return thread

    def add_user(self, username: str, permissions: int = MEMBER_PERMISSIONS) -> FakeUser:
        user = FakeUser(self.snowflake(), username, permissions)
        self.users.append(user)
        for guild in self.guilds:
            guild.members.append(user)
        return user

    def add_attachment(
        self, filename: str, data: bytes, content_type: str | None = None
    ) -> dict[str, Any]:
        """Store bytes the fake serves; returns the payload for ``resolved.attachments``."""
        upload = _Upload(filename, data, content_type or _guess_type(filename))
        return self._store(upload).attachment()

    def _store(self, upload: _Upload, description: str | None = None) -> SentFile:
        file_id = self.snowflake()
        url = f"{self.base_url}/attachments/{file_id}/{upload.filename}"
        sent = SentFile(
            file_id, upload.filename, upload.data, upload.content_type, url, description
        )
        self.blobs[file_id] = sent
        return sent

    def dm_channel(self, user: FakeUser) -> FakeChannel:
        """The bot's DM channel with ``user`` (one per user, made on first use)."""
        if user.id not in self._dm_channels:
            channel = FakeChannel(self.snowflake(), "", None, type=1, recipient=user)
            self._dm_channels[user.id] = channel
        return self._dm_channels[user.id]

    def channel(self, channel_id: int) -> FakeChannel | None:
        """A guild channel or a DM channel the fake knows, by id."""
        for guild in self.guilds:
            for channel in guild.channels:
                if channel.id == channel_id:
                    return channel
        return next((c for c in self._dm_channels.values() if c.id == channel_id), None)

    def user(self, user_id: int) -> FakeUser | None:
        known = [*self.users, self.owner, self.bot_user]
        return next((u for u in known if u.id == user_id), None)

    def delete_message(self, message_id: int) -> None:
        """A moderator deletes the message: from now on its edits and fetches answer 10008."""
        self.messages[message_id].deleted = True
        self._notify()

    def force_429(self, count: int = 1, retry_after: float = 0.05) -> None:
        """Answer the next ``count`` webhook / channel-message requests 429 (a limit the bot
        cannot see coming, or one that outlasts discord.py's five tries)."""
        self._forced_429 += [retry_after] * count

    def commands(self, guild: FakeGuild | None = None) -> dict[str, dict[str, Any]]:
        """The commands the bot synced globally (or to ``guild``), by name."""
        return self.synced.get(guild.id if guild else None, {})

    @property
    def api_base(self) -> str:
        return f"{self.base_url}/api/v10"

    @property
    def gateway_url(self) -> str:
        return self.base_url.replace("http://", "ws://", 1) + "/gateway"

    @property
    def connected(self) -> bool:
        return any(session.live for session in self._sessions)

    def shard_of(self, guild_id: int | None, count: int) -> int:
        """The shard Discord sends a guild's events to (DMs: shard 0)."""
        return 0 if guild_id is None else (guild_id >> 22) % count

    def sessions(self, shard: int | None = None) -> list[_GatewaySession]:
        """The live gateway connections (of one shard id), oldest first."""
        live = [s for s in self._sessions if s.live]
        return [s for s in live if s.shard and s.shard[0] == shard] if shard is not None else live

    def _session_for(self, guild_id: int | None) -> _GatewaySession:
        """The connection Discord would send this guild's (or a DM's) events to: the newest
        live one whose shard is the guild's under that connection's shard count."""
        for session in reversed(self.sessions()):
            assert session.shard is not None
            shard_id, count = session.shard
            if self.shard_of(guild_id, count) == shard_id:
                return session
        where = f"guild {guild_id}" if guild_id is not None else "DMs"
        raise RuntimeError(f"no bot is connected to the fake gateway for the shard of {where}")

    async def __aenter__(self) -> FakeDiscord:
        _raise_file_limit()
        app = web.Application(middlewares=[self._middleware], client_max_size=64 * 1024 * 1024)
        api, hook = "/api/v10", "/api/v10/webhooks/{app_id}/{token}"
        route = app.router.add_route
        route("GET", "/gateway", self._gateway)
        route("GET", "/attachments/{file_id}/{filename}", self._attachment)
        route("GET", f"{api}/users/@me", self._me)
        route("GET", f"{api}/oauth2/applications/@me", self._app_info)
        route("GET", f"{api}/applications/@me", self._app_info)
        route("GET", f"{api}/gateway", self._gateway_info)
        route("GET", f"{api}/gateway/bot", self._gateway_info)
        for scope in ("", "/guilds/{guild_id}"):
            route("PUT", f"{api}/applications/{{app_id}}{scope}/commands", self._sync)
            route("GET", f"{api}/applications/{{app_id}}{scope}/commands", self._list_commands)
        route("POST", f"{api}/interactions/{{interaction_id}}/{{token}}/callback", self._callback)
        route("POST", hook, self._followup)
        for method in ("GET", "PATCH", "DELETE"):
            route(method, hook + "/messages/{message_id}", self._webhook_message)
        route("POST", f"{api}/users/@me/channels", self._open_dm)
        route("POST", f"{api}/channels/{{channel_id}}/messages", self._channel_post)
        for method in ("GET", "PATCH", "DELETE"):
            route(
                method,
                f"{api}/channels/{{channel_id}}/messages/{{message_id}}",
                self._channel_message,
            )
        self._runner = web.AppRunner(app, shutdown_timeout=1.0, access_log=None)
        await self._runner.setup()
        # A burst of hundreds of connects overflows the default backlog (128): the kernel drops
        # SYNs and the client retries after 1 s, which would show up as acknowledgement latency.
        site = web.TCPSite(self._runner, "127.0.0.1", 0, backlog=1024)
        await site.start()
        self.base_url = f"http://127.0.0.1:{cast(Any, site._server).sockets[0].getsockname()[1]}"
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        for session in list(self._sessions):
            await session.ws.close(code=1001)
        if self._runner is not None:
            await self._runner.cleanup()

    # -- dispatching interactions ---------------------------------------------------------------

    async def slash(
        self,
        name: str,
        options: Mapping[str, Any] | Sequence[Mapping[str, Any]] | None = None,
        *,
        subcommand: str | None = None,
        attachments: Mapping[str, Any] | None = None,
        **who: Unpack[Who],
    ) -> FakeInteraction:
        """Dispatch a slash command (type 2); returns at once, the bot answers asynchronously.

        ``name`` may hold the subcommand path ("admin quota set"); ``options`` is a dict of
        values (typed from the synced command: FakeUser for users, ``add_attachment`` payloads,
        ``(filename, bytes)`` or bytes for attachments) or a list of raw option dicts;
        ``attachments`` is merged into ``options``.
        """
        values: Any = options if options is not None else {}
        if attachments:
            values = {**values, **attachments}
        return await self._command(2, name, values, subcommand, None, who)

    async def autocomplete(
        self,
        name: str,
        focused: str,
        value: Any,
        options: Mapping[str, Any] | None = None,
        *,
        subcommand: str | None = None,
        timeout: float = 5.0,  # noqa: ASYNC109
        **who: Unpack[Who],
    ) -> list[dict[str, Any]]:
        """Dispatch an autocomplete (type 4) of ``focused`` typed as ``value``; the choices."""
        values = {**(options or {}), focused: value}
        interaction = await self._command(4, name, values, subcommand, focused, who)
        await interaction.wait_until(lambda: interaction.choices is not None, timeout)
        return interaction.choices or []

    async def click(
        self,
        message: FakeMessage | int,
        custom_id: str,
        *,
        values: list[str] | None = None,
        **who: Unpack[Who],
    ) -> FakeInteraction:
        """Click a button (or pick ``values`` in a select) on a message the bot sent."""
        msg = message if isinstance(message, FakeMessage) else self.messages[message]
        found = [c for c in walk_components(msg.components) if c.get("custom_id") == custom_id]
        if not found:
            raise LookupError(f"no component {custom_id!r} on message {msg.id}: {msg.custom_ids}")
        data: dict[str, Any] = {"custom_id": custom_id, "component_type": found[0]["type"]}
        if values is not None:
            data["values"] = values
        guild = next((g for g in self.guilds if g.id == msg.guild_id), None)
        channel = self.channel(msg.channel_id)
        where: Who = {"guild": guild, "channel": channel}
        if channel is not None and channel.recipient is not None:  # the bot's DM: its recipient
            where = {"dm": True, "user": channel.recipient}
        payload = self._interaction_payload(3, data, **(where | who))
        payload["message"] = msg.payload()
        return await self._dispatch(payload, source=msg)

    async def submit_modal(
        self, opened: FakeInteraction, values: Mapping[str, str], **who: Unpack[Who]
    ) -> FakeInteraction:
        """Submit the modal the bot answered ``opened`` with (a MODAL_SUBMIT, type 5), its text
        inputs filled with ``values`` by custom_id (the rest keep their prefilled value). Checked
        like Discord's client: required inputs filled, lengths within min/max."""
        modal = opened.modal
        if modal is None:
            raise LookupError(f"interaction {opened.id} did not answer with a modal")
        known = {row["components"][0]["custom_id"] for row in modal["components"]}
        if unknown := set(values) - known:
            raise LookupError(f"no text input {sorted(unknown)} in the modal: {sorted(known)}")
        rows = []
        for row in modal["components"]:
            [text_input] = row["components"]
            value = values.get(text_input["custom_id"], text_input.get("value") or "")
            _check_modal_value(text_input, value)
            rows.append({"type": 1, "components": [
                {"type": 4, "custom_id": text_input["custom_id"], "value": value}
            ]})  # fmt: skip
        data = {"custom_id": modal["custom_id"], "components": rows}
        source = opened.source
        where: Who = {"user": _who_of(opened.payload, self)}
        if opened.payload.get("guild_id"):
            guild = next(g for g in self.guilds if g.id == int(opened.payload["guild_id"]))
            where |= {"guild": guild, "channel": self.channel(opened.channel_id)}
        else:
            where["dm"] = True
        payload = self._interaction_payload(5, data, **(where | who))
        if source is not None:
            payload["message"] = source.payload()
        return await self._dispatch(payload, source=source)

    async def _command(
        self,
        kind: int,
        name: str,
        values: Any,
        subcommand: str | None,
        focused: str | None,
        who: Who,
    ) -> FakeInteraction:
        path = name.split() + (subcommand.split() if subcommand else [])
        outside = who.get("dm") or who.get("private")
        guild = None if outside else (who.get("guild") or self.guild)
        command, scope = self._find_command(path[0], guild)
        user = who.get("user") or self.member
        given = who.get("permissions")
        perms = int(given) if given is not None else user.permissions
        _check_offered(command, scope, who, perms, guild)
        specs: list[dict[str, Any]] = command.get("options") or []
        wrappers = []
        for part in path[1:]:  # subcommand groups (type 2) and subcommands (type 1)
            spec = _find_option(specs, part, path[0])
            wrappers.append((part, spec["type"]))
            specs = spec.get("options") or []
        resolved: dict[str, dict[str, Any]] = {}
        if isinstance(values, Mapping):
            label = " ".join(path)
            options = [
                self._option(_find_option(specs, key, label), value, resolved, key == focused)
                for key, value in values.items()
            ]
        else:
            options = [dict(o) for o in values]
        for part, option_type in reversed(wrappers):
            options = [{"name": part, "type": option_type, "options": options}]
        data: dict[str, Any] = {"id": command["id"], "name": path[0], "type": 1, "options": options}
        if resolved:
            data["resolved"] = resolved
        if scope is not None:
            data["guild_id"] = str(scope)
        payload = self._interaction_payload(kind, data, **(who | {"guild": guild}))
        return await self._dispatch(payload)

    def _find_command(
        self, name: str, guild: FakeGuild | None
    ) -> tuple[dict[str, Any], int | None]:
        for scope in [guild.id, None] if guild else [None]:
            if name in self.synced.get(scope, {}):
                return self.synced[scope][name], scope
        known = sorted({n for commands in self.synced.values() for n in commands})
        raise LookupError(f"/{name} was not synced; synced commands: {known}")

    def _option(
        self, spec: dict[str, Any], value: Any, resolved: dict[str, Any], focused: bool
    ) -> dict[str, Any]:
        """One option, its value typed like the synced command says (and resolved)."""
        kind, name = spec["type"], spec["name"]
        if focused:
            return {"name": name, "type": kind, "value": value, "focused": True}
        if kind in (6, 9) and isinstance(value, FakeUser):  # user / mentionable
            member = value.member_payload(value.permissions)
            resolved.setdefault("users", {})[str(value.id)] = member.pop("user")
            resolved.setdefault("members", {})[str(value.id)] = member
            value = str(value.id)
        elif kind == 8 and isinstance(value, dict):  # role
            resolved.setdefault("roles", {})[value["id"]] = value
            value = value["id"]
        elif kind == 7 and isinstance(value, FakeChannel):
            resolved.setdefault("channels", {})[str(value.id)] = value.payload(MEMBER_PERMISSIONS)
            value = str(value.id)
        elif kind == 11:  # attachment
            if isinstance(value, bytes):
                value = ("upload.png", value)
            if isinstance(value, tuple):
                value = self.add_attachment(*value)
            resolved.setdefault("attachments", {})[value["id"]] = value
            value = value["id"]
        elif kind in (3, 4, 10):
            value = {3: str, 4: int, 10: float}[kind](value)
        return {"name": name, "type": kind, "value": value}

    def _interaction_payload(
        self,
        kind: int,
        data: dict[str, Any],
        *,
        user: FakeUser | None = None,
        guild: FakeGuild | None = None,
        channel: FakeChannel | None = None,
        permissions: int | str | None = None,
        dm: bool = False,
        private: bool = False,
        user_install: bool = False,
        locale: str = "en-US",
    ) -> dict[str, Any]:
        """INTERACTION_CREATE's ``d``, with everything discord.py reads."""
        user = user or self.member
        perms = int(permissions) if permissions is not None else user.permissions
        interaction_id = self.snowflake()
        payload: dict[str, Any] = {"id": str(interaction_id), "type": kind, "data": data}
        payload["token"] = f"fake-interaction-token.{interaction_id}.{secrets.token_urlsafe(24)}"
        payload |= {"version": 1, "application_id": str(self.application_id), "locale": locale}
        payload |= {"entitlements": [], "attachment_size_limit": self.attachment_size_limit}
        payload["app_permissions"] = str(BOT_PERMISSIONS)
        owners = {"1": str(user.id)} if user_install or private else None
        if private:  # somebody else's DM: the bot is not in it and cannot post there
            other_id = self.snowflake()
            self._private_channels.add(other_id)
            other = {"id": str(other_id), "type": 1, "recipients": [user.payload()]}
            payload |= {"user": user.payload(), "channel_id": str(other_id), "channel": other}
            return payload | {"context": PRIVATE_CHANNEL, "authorizing_integration_owners": owners}
        if dm or guild is None:
            dm_channel = self.dm_channel(user).payload()
            payload |= {"user": user.payload(), "channel_id": dm_channel["id"]}
            payload |= {"channel": dm_channel, "context": BOT_DM}
            return payload | {"authorizing_integration_owners": owners or {"0": "0"}}
        channel = channel or guild.channel
        payload["guild"] = {"id": str(guild.id), "locale": "en-US", "features": []}
        payload |= {"guild_id": str(guild.id), "guild_locale": "en-US", "context": GUILD}
        payload |= {"channel_id": str(channel.id), "channel": channel.payload(perms)}
        payload["member"] = user.member_payload(perms)
        return payload | {"authorizing_integration_owners": owners or {"0": str(guild.id)}}

    async def _dispatch(
        self, payload: dict[str, Any], source: FakeMessage | None = None
    ) -> FakeInteraction:
        guild_id = payload.get("guild_id")
        session = self._session_for(int(guild_id) if guild_id else None)
        interaction = FakeInteraction(payload, source)
        interaction.shard = session.shard[0] if session.shard else None
        self.interactions[interaction.id] = interaction
        self._by_token[interaction.token] = interaction
        interaction.dispatched_at = time.monotonic()
        await session.dispatch("INTERACTION_CREATE", payload)
        return interaction

    # -- REST -----------------------------------------------------------------------------------

    @web.middleware
    async def _middleware(
        self, request: web.Request, handler: Callable[[web.Request], Any]
    ) -> web.StreamResponse:
        """Parse and log every API request; bot-token auth; 404s and fake bugs recorded."""
        if not request.path.startswith("/api/"):
            return cast(web.StreamResponse, await handler(request))
        body, uploads = await _read_body(request)
        summary = [(u.filename, len(u.data)) for u in uploads.values()]
        record = RequestRecord(
            request.method, request.path, dict(request.query), time.monotonic(), body, summary,
            peer=request.transport.get_extra_info("peername") if request.transport else None,
        )  # fmt: skip
        self.requests.append(record)
        request[_BODY], request[_UPLOADS] = body, uploads
        bot_auth = not request.path.startswith(("/api/v10/interactions/", "/api/v10/webhooks/"))
        hook = self._webhook_owner(request)
        if hook is not None and hook.dead:
            hook.calls_after_dead += 1
        response: web.StreamResponse
        if bot_auth and request.headers.get("Authorization") != f"Bot {self.token}":
            response = error_response(401, 0, "401: Unauthorized")
        else:
            try:
                response = self._gate(request, hook) or await handler(request)
            except (web.HTTPNotFound, web.HTTPMethodNotAllowed):
                self.unhandled.append(record)
                response = error_response(
                    404, 0, f"404: Not Found ({request.method} {request.path})"
                )
            except (
                Exception
            ) as exc:  # a fake bug: answer 400, as a 5xx makes discord.py retry slowly
                self.errors.append(f"{request.method} {request.path}: {exc!r}")
                response = error_response(400, 0, f"fake discord error: {exc!r}")
        if hook is not None and response.status in (401, 404):
            hook.dead = True
        self.invalid_requests += response.status in (401, 403, 429)
        self.rate_limited += response.status == 429
        response.headers.update(request.get(_RATE_HEADERS) or {})
        response.headers["Via"] = "1.1 google"  # discord.py only retries a 429 that has it
        record.status = response.status
        self._notify()
        return response

    def _gate(self, request: web.Request, hook: FakeInteraction | None) -> web.Response | None:
        """Discord's answer before a request reaches its route (dead token, too large, rate
        limited), or None to let it through. ``hook``: the interaction of a webhook route."""
        now, body = time.monotonic(), request[_BODY]
        webhook = request.path.startswith("/api/v10/webhooks/")
        if webhook and hook is None:
            return error_response(404, 10015, "Unknown Webhook")
        if hook is not None and (hook.expired or now - hook.dispatched_at > self.token_lifetime):
            return self._reject(hook, body, _Rejected(401, 50027, "Invalid Webhook Token"))
        if sum(len(u.data) for u in request[_UPLOADS].values()) > self.request_size_limit:
            too_large = _Rejected(413, 40005, "Request entity too large")
            if hook is not None:
                return self._reject(hook, body, too_large)
            return error_response(too_large.status, too_large.code, too_large.text)
        channel_route = request.path.startswith("/api/v10/channels/")
        if not (webhook or channel_route):
            return None
        if self._forced_429:
            return self._too_many(hook, body, self._forced_429.pop(0), None)
        windows: list[tuple[_Window, tuple[int, float]]] = []
        if hook is not None and self.webhook_rate is not None:
            windows.append((self._window(f"token:{hook.id}"), self.webhook_rate))
        channel_id = hook.channel_id if hook is not None else request.match_info["channel_id"]
        if request.method in ("POST", "PATCH") and self.channel_rate is not None:
            windows.append((self._window(f"channel:{channel_id}"), self.channel_rate))
        for window, rate in windows:
            if not window.has_room(rate, now):
                return self._too_many(hook, body, window.resets_at - now, window)
        for window, _ in windows:
            window.remaining -= 1
        if windows:  # the headers of the route's own bucket
            request[_RATE_HEADERS] = windows[0][0].headers(now)
        return None

    def _window(self, key: str) -> _Window:
        if key not in self._windows:
            self._windows[key] = _Window(bucket=secrets.token_hex(8))
        return self._windows[key]

    def _too_many(
        self, hook: FakeInteraction | None, body: Any, retry_after: float, window: _Window | None
    ) -> web.Response:
        """A 429 as Discord sends it: JSON body with ``retry_after``, rate-limit headers."""
        now = time.monotonic()
        data = {"message": "You are being rate limited.", "retry_after": round(retry_after, 3)}
        response = json_response(data | {"global": False, "code": 0}, 429)
        if window is not None:
            response.headers.update(window.headers(now))
        response.headers["Retry-After"] = str(max(1, math.ceil(retry_after)))
        response.headers["X-RateLimit-Scope"] = "user"  # every 429 says whose limit it was
        if hook is not None:
            note = f"429: retry after {retry_after:.3f}s"
            hook._record(Event("rate_limited", now, body or {}, error=note))
        return response

    async def _me(self, request: web.Request) -> web.Response:
        return json_response(
            self.bot_user.payload() | {"verified": True, "mfa_enabled": False, "flags": 0}
        )

    async def _app_info(self, request: web.Request) -> web.Response:
        info: dict[str, Any] = {"id": str(self.application_id), "name": self.bot_user.username}
        info |= {"description": "", "icon": None, "bot_public": False, "verify_key": "0" * 64}
        info |= {"bot_require_code_grant": False, "owner": self.owner.payload(), "flags": 0}
        return json_response(info | {"team": None, "summary": "", "rpc_origins": []})

    async def _gateway_info(self, request: web.Request) -> web.Response:
        if not request.path.endswith("/bot"):  # GET /gateway: only the url
            return json_response({"url": self.gateway_url})
        limit = {"total": 1000, "remaining": 999, "reset_after": 0, "max_concurrency": 1}
        info = {"url": self.gateway_url, "shards": self.recommended_shards}
        return json_response(info | {"session_start_limit": limit})

    async def _attachment(self, request: web.Request) -> web.Response:
        blob = self.blobs.get(int(request.match_info["file_id"]))
        if blob is None:
            return web.Response(status=404, text="Not Found")
        return web.Response(body=blob.data, content_type=blob.content_type)

    async def _sync(self, request: web.Request) -> web.Response:
        """Bulk overwrite: commands keep their id when re-synced under the same name."""
        scope = int(request.match_info["guild_id"]) if "guild_id" in request.match_info else None
        previous, synced = self.synced.get(scope, {}), {}
        commands: list[dict[str, Any]] = request[_BODY]
        for command in commands:
            old = previous.get(command["name"])
            permissions = command.get("default_member_permissions")
            synced[command["name"]] = {"type": 1, "options": [], "nsfw": False, **command} | {
                "id": old["id"] if old else str(self.snowflake()),
                "application_id": str(self.application_id),
                "version": str(self.snowflake()),
                "default_member_permissions": None if permissions is None else str(permissions),
                **({"guild_id": str(scope)} if scope else {}),
            }
        self.synced[scope] = synced
        self.sync_count += 1
        return json_response(list(synced.values()))

    async def _list_commands(self, request: web.Request) -> web.Response:
        scope = int(request.match_info["guild_id"]) if "guild_id" in request.match_info else None
        return json_response(list(self.synced.get(scope, {}).values()))

    async def _callback(self, request: web.Request) -> web.Response:
        """The interaction response: 4 message, 5 defer, 6/7 (update) the clicked message, 8
    choices, 9 a modal (only to a command or a component, never to a modal submit)."""
        at = time.monotonic()
        interaction = self.interactions.get(int(request.match_info["interaction_id"]))
        if interaction is None or interaction.token != request.match_info["token"]:
            return error_response(404, 10062, "Unknown interaction")
        body: dict[str, Any] = request[_BODY]
        kind, data = body["type"], body.get("data") or {}
        message: FakeMessage | None = None
        added: list[SentFile] = []
        try:
            if kind == 9:  # the body is checked before the interaction's state, like Discord
                if interaction.type not in (2, 3):  # not to autocomplete nor to a modal submit
                    raise _Rejected(400, 40004, "Invalid interaction response type")
                _check_modal(data)
            if interaction.callback is not None:
                raise _Rejected(400, 40060, "Interaction has already been acknowledged.")
            late = (
                self.ack_deadline is not None and at - interaction.dispatched_at > self.ack_deadline
            )
            if late or interaction.expired:
                raise _Rejected(404, 10062, "Unknown interaction")
            if kind in (4, 5):
                message = self._new_message(interaction, 20 if interaction.type == 2 else 0)
                message.flags = (int(data.get("flags") or 0) & EPHEMERAL) | (
                    LOADING if kind == 5 else 0
                )
            elif kind in (6, 7):
                message = interaction.source
                if message is None:
                    raise _Rejected(400, 40004, "Invalid interaction response type")
            if message is not None and kind in (4, 7):
                added = self._apply(message, data, request[_UPLOADS], editing=kind == 7)
            if kind == 8:
                _check_choices(data.get("choices") or [])
        except _Rejected as rejected:
            return self._reject(interaction, body, rejected)
        if kind == 8:
            interaction.choices = list(data.get("choices") or [])
        if kind == 9:
            interaction.modal = copy.deepcopy(data)
        if message is not None:
            interaction.original = self.messages[message.id] = message
        interaction._record(Event("callback", at, body, added, message))
        answer = {"id": str(interaction.id), "type": interaction.type}
        answer |= {"response_message_id": str(message.id) if message else None}
        answer |= {"response_message_loading": kind == 5}
        answer |= {"response_message_ephemeral": bool(message and message.ephemeral)}
        resource: dict[str, Any] = {"type": kind}
        if message is not None:
            resource["message"] = message.payload()
        return json_response({"interaction": answer, "resource": resource})

    async def _followup(self, request: web.Request) -> web.Response:
        at = time.monotonic()
        interaction = self._webhook_owner(request)
        if interaction is None or interaction.callback is None:
            return error_response(404, 10015, "Unknown Webhook")
        body: dict[str, Any] = request[_BODY] or {}
        message = interaction.original
        if not (
            interaction.callback_type == 5 and message and message.loading and not message.deleted
        ):
            message = self._new_message(interaction, 0)
            message.flags = int(body.get("flags") or 0) & EPHEMERAL
        # else, like Discord: the first followup after a defer edits the "thinking" message and
        # keeps the defer's visibility (an ephemeral flag asked for now is ignored). Once that
        # message was deleted, a followup is a new message with its own flags.
        try:
            added = self._apply(message, body, request[_UPLOADS], editing=False)
        except _Rejected as rejected:
            return self._reject(interaction, body, rejected)
        self.messages[message.id] = message
        interaction.followups.append(message)
        interaction._record(Event("followup", at, body, added, message))
        return json_response(message.payload())

    async def _webhook_message(self, request: web.Request) -> web.StreamResponse:
        """GET / PATCH / DELETE of @original or of a followup."""
        at = time.monotonic()
        interaction = self._webhook_owner(request)
        if interaction is None:
            return error_response(404, 10015, "Unknown Webhook")
        key = request.match_info["message_id"]
        message = interaction.original if key == "@original" else None
        if key.isdigit() and (found := self.messages.get(int(key))):
            message = found if found.interaction_id == interaction.id else None
        body: dict[str, Any] = request[_BODY] or {}
        try:
            if message is None or message.deleted:
                raise _Rejected(404, 10008, "Unknown Message")
            if request.method == "PATCH":
                added = self._apply(message, body, request[_UPLOADS], editing=True)
                interaction._record(Event("edit", at, body, added, message))
            elif request.method == "DELETE":
                message.deleted = True
                interaction._record(Event("delete", at, {}, [], message))
                return web.Response(status=204)
            else:
                interaction._record(Event("fetch", at, {}, [], message))
        except _Rejected as rejected:
            return self._reject(interaction, body, rejected)
        return json_response(message.payload())

    async def _open_dm(self, request: web.Request) -> web.Response:
        """``POST /users/@me/channels``: the bot's DM channel with ``recipient_id``."""
        user = self.user(int((request[_BODY] or {}).get("recipient_id") or 0))
        if user is None:
            return error_response(400, 50035, "Invalid Form Body: unknown recipient_id")
        return json_response(self.dm_channel(user).payload())

    async def _channel_post(self, request: web.Request) -> web.Response:
        """The bot posts a message in a channel (or a DM channel) with its own token."""
        channel_id = int(request.match_info["channel_id"])
        channel = self.channel(channel_id)
        try:
            if channel is None:
                if channel_id in self._private_channels:
                    raise _Rejected(403, 50001, "Missing Access")
                raise _Rejected(404, 10003, "Unknown Channel")
            if channel.recipient is not None and not channel.recipient.accepts_dms:
                raise _Rejected(403, 50007, "Cannot send messages to this user")
            if not channel.can_send:
                raise _Rejected(403, 50013, "Missing Permissions")
            body: dict[str, Any] = request[_BODY] or {}
            kind = 19 if body.get("message_reference") else 0  # a reply, or a plain message
            message = FakeMessage(
                self.snowflake(), channel.id, channel.guild_id, self.bot_user.payload(), kind
            )
            self._apply(message, body, request[_UPLOADS], editing=False)
        except _Rejected as rejected:
            return error_response(rejected.status, rejected.code, rejected.text)
        self.messages[message.id] = message
        if channel.recipient is not None:
            self.dm_messages[channel.recipient.id].append(message)
        else:
            self.channel_messages[channel.id].append(message)
        return json_response(message.payload())

    async def _channel_message(self, request: web.Request) -> web.StreamResponse:
        """GET / PATCH / DELETE of one message in a channel, with the bot's own token: it may
        edit only what it posted there, and delete any message it can see (Manage Messages)."""
        channel_id = int(request.match_info["channel_id"])
        message = self.messages.get(int(request.match_info["message_id"]))
        if message is None or message.channel_id != channel_id or message.deleted:
            return error_response(404, 10008, "Unknown Message")
        if message.ephemeral:  # only its interaction's webhook reaches an ephemeral message
            return error_response(404, 10008, "Unknown Message")
        if request.method == "DELETE":
            message.deleted = True
            return web.Response(status=204)
        if request.method == "PATCH":
            if message.interaction_id is not None:
                return error_response(403, 50005, "Cannot edit a message authored by another user")
            try:
                self._apply(message, request[_BODY] or {}, request[_UPLOADS], editing=True)
            except _Rejected as rejected:
                return error_response(rejected.status, rejected.code, rejected.text)
        return json_response(message.payload())

    def _webhook_owner(self, request: web.Request) -> FakeInteraction | None:
        """The interaction whose token a webhook route names (None: not one, or unknown)."""
        if not request.path.startswith("/api/v10/webhooks/"):
            return None
        match = request.match_info
        if match.get("app_id") != str(self.application_id):
            return None
        return self._by_token.get(match.get("token", ""))

    def _reject(self, interaction: FakeInteraction, body: Any, why: _Rejected) -> web.Response:
        interaction._record(Event("rejected", time.monotonic(), body or {}, error=str(why)))
        return error_response(why.status, why.code, why.text)

    def _new_message(self, interaction: FakeInteraction, kind: int) -> FakeMessage:
        payload = interaction.payload
        metadata = {"id": payload["id"], "type": payload["type"]}
        metadata["user"] = (payload.get("member") or payload)["user"]
        metadata["authorizing_integration_owners"] = payload["authorizing_integration_owners"]
        guild_id = payload.get("guild_id")
        return FakeMessage(
            id=self.snowflake(),
            channel_id=int(payload["channel_id"]),
            guild_id=int(guild_id) if guild_id else None,
            author=self.bot_user.payload(),
            type=kind,
            interaction_id=interaction.id,
            metadata=metadata,
        )

    def _apply(
        self,
        message: FakeMessage,
        body: dict[str, Any],
        uploads: dict[int, _Upload],
        *,
        editing: bool,
    ) -> list[SentFile]:
        """Apply a create/edit body to ``message`` (all or nothing); the files it added.

        Like Discord: ``attachments`` (when present) lists the old files to keep by id and the
        new ``files[n]`` by index n; the ephemeral flag can't change; any write ends "thinking".
        """
        new = copy.copy(message)
        for key, empty in (("content", ""), ("embeds", []), ("components", []), ("poll", None)):
            if key in body:
                setattr(new, key, body[key] if body[key] is not None else empty)
        if body.get("flags") is not None:
            new.flags = (new.flags & EPHEMERAL) | (int(body["flags"]) & ~(EPHEMERAL | LOADING))
        new.flags &= ~LOADING
        if any(len(u.data) > self.attachment_size_limit for u in uploads.values()):
            raise _Rejected(413, 40005, "Request entity too large")
        pending, added, files = dict(uploads), [], list(message.files)
        if "attachments" in body:
            old, files = {f.id: f for f in message.files}, []
            for entry in body["attachments"] or []:
                index = int(entry["id"])
                if index in pending:
                    added.append(self._store(pending.pop(index), entry.get("description")))
                    files.append(added[-1])
                elif index in old:
                    files.append(old[index])
        rest = [self._store(upload) for upload in pending.values()]
        added += rest
        new.files = files + rest
        problem = _message_problem(new)
        if problem is not None:
            raise _Rejected(400, *problem)
        if not editing or "content" in body or "allowed_mentions" in body:
            _apply_mentions(new, body.get("allowed_mentions"))
        if editing:
            new.edited = now_iso()
        message.__dict__.update(new.__dict__)
        return added

    # -- gateway --------------------------------------------------------------------------------

    async def _gateway(self, request: web.Request) -> web.WebSocketResponse:
        # Plain text frames: discord.py only zlib-decompresses binary ones.
        ws = web.WebSocketResponse(compress=False, max_msg_size=0)
        await ws.prepare(request)
        session = _GatewaySession(ws)
        self._sessions.append(session)
        try:
            await session.send({"op": 10, "d": {"heartbeat_interval": self.heartbeat_interval_ms}})
            async for frame in ws:
                if frame.type != WSMsgType.TEXT:
                    continue
                message = json.loads(frame.data)
                if message.get("op") == 1:  # heartbeat
                    await session.send({"op": 11})
                    continue
                self.gateway_received.append(message)
                if message.get("op") == 2:
                    await self._identify(session, message["d"])
                elif message.get("op") == 6:
                    await self._resume(session, message["d"])
        finally:
            self._sessions.remove(session)
            if session.session_id is not None and session.shard is not None:
                self._resumable[session.session_id] = (session.seq, session.shard)
            self._notify()
        return ws

    async def _identify(self, session: _GatewaySession, data: dict[str, Any]) -> None:
        if data.get("token") != self.token:
            await session.ws.close(code=4004, message=b"Authentication failed.")
            return
        shard = data.get("shard", [0, 1])
        valid = (
            isinstance(shard, list) and len(shard) == 2
            and all(isinstance(n, int) and not isinstance(n, bool) for n in shard)
            and shard[1] >= 1 and 0 <= shard[0] < shard[1]
        )  # fmt: skip
        if not valid:
            await session.ws.close(code=4010, message=b"Invalid shard.")
            return
        shard_id, count = shard
        guilds = [g for g in self.guilds if self.shard_of(g.id, count) == shard_id]
        if len(guilds) > self.max_guilds_per_shard:
            await session.ws.close(code=4011, message=b"Sharding required.")
            return
        self.identify_count += 1
        session.session_id = secrets.token_hex(16)
        session.shard = (shard_id, count)
        ready: dict[str, Any] = {"v": 10, "session_id": session.session_id}
        ready["user"] = self.bot_user.payload() | {"verified": True, "mfa_enabled": False}
        ready["guilds"] = [{"id": str(g.id), "unavailable": True} for g in guilds]
        ready["resume_gateway_url"] = self.gateway_url
        ready["application"] = {"id": str(self.application_id), "flags": 0}
        ready["shard"] = [shard_id, count]
        await session.dispatch("READY", ready | {"private_channels": [], "relationships": []})
        for guild in guilds:
            await session.dispatch("GUILD_CREATE", guild.payload())
        self._notify()

    async def _resume(self, session: _GatewaySession, data: dict[str, Any]) -> None:
        closed = self._resumable.pop(data.get("session_id", ""), None)
        if data.get("token") != self.token or closed is None:
            await session.send({"op": 9, "d": False})  # invalid session: identify again
            return
        session.session_id = data["session_id"]
        session.seq, session.shard = closed
        await session.dispatch("RESUMED", {})
        self._notify()


# -- pointing discord.py at the fake, running bots ----------------------------------------------


class patched_discord_endpoints:
    """Point discord.py's REST base and gateway at ``fake``; restore them on exit.

    Works as ``with`` or ``async with``; nests (each exit restores what its enter replaced).
    Both are read when a request or connection is made, so keep it active while a bot runs.
    """

    def __init__(self, fake: FakeDiscord) -> None:
        self.fake = fake
        self._saved: list[tuple[str, yarl.URL]] = []

    def __enter__(self) -> FakeDiscord:
        self._saved.append((Route.BASE, DiscordWebSocket.DEFAULT_GATEWAY))
        Route.BASE = self.fake.api_base
        DiscordWebSocket.DEFAULT_GATEWAY = yarl.URL(self.fake.gateway_url)
        return self.fake

    def __exit__(self, *exc_info: object) -> None:
        Route.BASE, DiscordWebSocket.DEFAULT_GATEWAY = self._saved.pop()

    async def __aenter__(self) -> FakeDiscord:
        return self.__enter__()

    async def __aexit__(self, *exc_info: object) -> None:
        self.__exit__()


class BotHarness:
    """Runs one discord.py bot at a time against a ``FakeDiscord``; a restart takes a new bot.

    ``start`` sets a small ``guild_ready_timeout`` (ImageBot's constructor takes no client
    options, so it goes on ``bot._connection``, where discord.py keeps it), starts the bot with
    the fake's token and returns once it is READY and, with ``expect_sync``, has synced its tree.
    """

    def __init__(
        self, fake: FakeDiscord, *, guild_ready_timeout: float = 0.05, ready_timeout: float = 10.0
    ) -> None:
        self.fake = fake
        self.guild_ready_timeout = guild_ready_timeout
        self.ready_timeout = ready_timeout
        self.bot: discord.Client | None = None
        self._task: asyncio.Task[None] | None = None
        self._patch = patched_discord_endpoints(fake)

    async def __aenter__(self) -> BotHarness:
        self._patch.__enter__()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        try:
            await self.stop()
        finally:
            self._patch.__exit__()

    async def start(self, bot: BotT, *, expect_sync: bool = True) -> BotT:
        if self.bot is not None:
            raise RuntimeError("a bot is already running; stop() it first")
        bot._connection.guild_ready_timeout = self.guild_ready_timeout
        syncs, identifies = self.fake.sync_count, self.fake.identify_count
        self.bot = bot
        self._task = task = asyncio.create_task(bot.start(self.fake.token), name="fake-discord-bot")
        deadline = time.monotonic() + self.ready_timeout
        while not (bot.is_ready() and self.fake.identify_count > identifies):
            if task.done():
                task.result()  # raises the bot's error
                raise RuntimeError("the bot stopped before it was ready")
            if time.monotonic() > deadline:
                raise TimeoutError(f"bot not ready after {self.ready_timeout}s")
            await asyncio.sleep(0.01)
        if expect_sync:
            timeout = max(deadline - time.monotonic(), 0.1)
            await self.fake.wait_until(lambda: self.fake.sync_count > syncs, timeout)
        return bot

    async def stop(self) -> None:
        """Close the bot and wait for ``start`` to return (its errors propagate)."""
        bot, task, self.bot, self._task = self.bot, self._task, None, None
        if bot is None or task is None:
            return
        await bot.close()
        with contextlib.suppress(asyncio.CancelledError, TimeoutError):
            await asyncio.wait_for(task, 5.0)

    async def restart(self, bot: BotT, *, expect_sync: bool = True) -> BotT:
        """Stop the running bot and start ``bot`` (a new instance) against the same fake."""
        await self.stop()
        return await self.start(bot, expect_sync=expect_sync)


@pytest.fixture
async def fake_discord() -> AsyncIterator[FakeDiscord]:
    """A running FakeDiscord with discord.py pointed at it."""
    async with FakeDiscord() as fake, patched_discord_endpoints(fake):
        yield fake


@pytest.fixture
async def bot_harness(fake_discord: FakeDiscord) -> AsyncIterator[BotHarness]:
    """A BotHarness on ``fake_discord``; stops whatever bot it runs at teardown."""
    async with BotHarness(fake_discord) as harness:
        yield harness


# -- helpers ------------------------------------------------------------------------------------


def _role(role_id: int, name: str, permissions: int, position: int) -> dict[str, Any]:
    role = {"id": str(role_id), "name": name, "permissions": str(permissions), "position": position}
    return (
        role | {"color": 0, "flags": 0} | dict.fromkeys(("hoist", "managed", "mentionable"), False)
    )


def _check_offered(
    command: dict[str, Any], scope: int | None, who: Who, permissions: int, guild: FakeGuild | None
) -> None:
    """Raise CommandHidden where Discord would not offer ``command`` to this user."""
    name = command["name"]
    if scope is None:  # contexts and integration types only apply to global commands
        context = PRIVATE_CHANNEL if who.get("private") else BOT_DM if who.get("dm") else GUILD
        contexts = command.get("contexts")
        if contexts is None:  # Discord's default: everywhere (dm_permission is the old switch)
            contexts = [GUILD] if command.get("dm_permission") is False else [0, 1, 2]
        install = USER_INSTALL if who.get("user_install") or who.get("private") else GUILD_INSTALL
        installs = command.get("integration_types")
        if context not in contexts:
            raise CommandHidden(f"/{name} is not offered in context {context} ({contexts})")
        if install not in (installs if installs is not None else [GUILD_INSTALL]):
            raise CommandHidden(f"/{name} is not offered to integration type {install}")
    required = command.get("default_member_permissions")
    if guild is None or required is None or permissions & ADMINISTRATOR:
        return
    if name in guild.opened_commands:
        return
    if int(required) == 0 or int(required) & ~permissions:  # "0": administrators only
        raise CommandHidden(f"/{name} needs permissions {required}, the user has {permissions}")


def _find_option(specs: list[dict[str, Any]], name: str, command: str) -> dict[str, Any]:
    for spec in specs:
        if spec["name"] == name:
            return spec
    raise KeyError(f"/{command} has no option {name!r}; it has {[s['name'] for s in specs]}")


def _guess_type(filename: str) -> str:
    return mimetypes.guess_type(filename)[0] or "application/octet-stream"


async def _read_body(request: web.Request) -> tuple[Any, dict[int, _Upload]]:
    """JSON body, or multipart ``payload_json`` + ``files[n]`` parts."""
    if not request.content_type.startswith("multipart/"):
        raw = await request.read()
        return (json.loads(raw) if raw else None), {}
    body: Any = None
    uploads: dict[int, _Upload] = {}
    reader = await request.multipart()
    while (part := await reader.next()) is not None:
        assert isinstance(part, BodyPartReader)
        if part.name == "payload_json":
            body = json.loads(await part.text())
        elif (match := _FILE_FIELD.fullmatch(part.name or "")) and part.filename:
            declared = part.headers.get("Content-Type", "application/octet-stream")
            kind = (
                _guess_type(part.filename) if declared == "application/octet-stream" else declared
            )
            uploads[int(match[1])] = _Upload(part.filename, bytes(await part.read()), kind)
    return body, uploads


def _who_of(payload: dict[str, Any], fake: FakeDiscord) -> FakeUser:
    """The user who sent an interaction payload."""
    user_id = int((payload.get("member") or payload)["user"]["id"])
    user = fake.user(user_id)
    if user is None:
        raise LookupError(f"unknown user {user_id}")
    return user


def _check_modal(data: dict[str, Any]) -> None:
    """A modal (callback 9): custom_id 1-100, title 1-45, 1 to 5 action rows of exactly one text
    input each (custom_id 1-100, label 1-45, style 1 short or 2 paragraph, min_length 0-4000,
    max_length 1-4000, a prefilled value of at most 4000 and at most max_length)."""
    invalid = "Invalid Form Body: "
    if not 1 <= len(data.get("custom_id") or "") <= 100:
        raise _Rejected(400, 50035, invalid + "modal custom_id must be 1-100 long")
    if not 1 <= len(data.get("title") or "") <= 45:
        raise _Rejected(400, 50035, invalid + "modal title must be 1-45 long")
    rows = data.get("components") or []
    if not 1 <= len(rows) <= 5:
        raise _Rejected(400, 50035, invalid + "a modal has 1 to 5 action rows")
    for row in rows:
        inputs = row.get("components") or []
        if row.get("type") != 1 or len(inputs) != 1 or inputs[0].get("type") != 4:
            raise _Rejected(400, 50035, invalid + "each modal row holds exactly one text input")
        text_input = inputs[0]
        if not 1 <= len(text_input.get("custom_id") or "") <= 100:
            raise _Rejected(400, 50035, invalid + "text input custom_id must be 1-100 long")
        if not 1 <= len(text_input.get("label") or "") <= 45:
            raise _Rejected(400, 50035, invalid + "text input label must be 1-45 long")
        if text_input.get("style") not in (1, 2):
            raise _Rejected(400, 50035, invalid + "text input style must be 1 or 2")
        min_length, max_length = text_input.get("min_length"), text_input.get("max_length")
        if min_length is not None and not 0 <= min_length <= 4000:
            raise _Rejected(400, 50035, invalid + "min_length must be 0-4000")
        if max_length is not None and not 1 <= max_length <= 4000:
            raise _Rejected(400, 50035, invalid + "max_length must be 1-4000")
        value = text_input.get("value") or ""
        if len(value) > min(4000, max_length or 4000):
            raise _Rejected(400, 50035, invalid + "text input value longer than max_length")


def _check_modal_value(text_input: dict[str, Any], value: str) -> None:
    """What Discord's client lets a user submit in one text input."""
    if text_input.get("required", True) and not value:
        raise ValueError(f"{text_input['custom_id']} is required")
    if value and len(value) < (text_input.get("min_length") or 0):
        raise ValueError(f"{text_input['custom_id']} is shorter than min_length")
    if len(value) > (text_input.get("max_length") or 4000):
        raise ValueError(f"{text_input['custom_id']} is longer than max_length")


def _check_choices(choices: list[dict[str, Any]]) -> None:
    """Autocomplete results: at most 25 (discord.py sends them all), names and string values of
    1 to 100 characters."""
    invalid = "Invalid Form Body: "
    if len(choices) > 25:
        raise _Rejected(400, 50035, invalid + "at most 25 choices")
    for choice in choices:
        texts = [choice.get("name") or ""]
        if isinstance(choice.get("value"), str):
            texts.append(choice["value"])
        if any(not 1 <= len(text) <= 100 for text in texts):
            raise _Rejected(400, 50035, invalid + "choice names and values must be 1-100 long")


def _mentioned_user(user_id: int) -> dict[str, Any]:
    """The user object a message's ``mentions`` carries (enough for discord.py)."""
    name = f"user-{user_id}"
    return {"id": str(user_id), "username": name, "global_name": None, "discriminator": "0"} | {
        "avatar": None
    }


def _apply_mentions(message: FakeMessage, allowed: dict[str, Any] | None) -> None:
    """Who ``message``'s content pings under ``allowed_mentions`` as Discord applies it:
    without it everything is parsed; ``parse`` names the kinds parsed wholesale, ``users`` /
    ``roles`` list the only ids pinged otherwise (both for one kind is a 400)."""
    users = list(dict.fromkeys(int(i) for i in _MENTION.findall(message.content)))
    roles = list(dict.fromkeys(int(i) for i in _ROLE_MENTION.findall(message.content)))
    everyone = "@everyone" in message.content or "@here" in message.content
    message.allowed_mentions = allowed
    if allowed is None:
        message.mentions, message.mention_roles, message.mention_everyone = users, roles, everyone
        return
    parse = allowed.get("parse") or []
    only_users = [int(i) for i in allowed.get("users") or []]
    only_roles = [int(i) for i in allowed.get("roles") or []]
    invalid = "Invalid Form Body: allowed_mentions "
    if ("users" in parse and only_users) or ("roles" in parse and only_roles):
        raise _Rejected(400, 50035, invalid + "parse and users/roles are mutually exclusive")
    if len(only_users) > 100 or len(only_roles) > 100:
        raise _Rejected(400, 50035, invalid + "may list at most 100 users and 100 roles")
    message.mentions = users if "users" in parse else [u for u in users if u in only_users]
    message.mention_roles = roles if "roles" in parse else [r for r in roles if r in only_roles]
    message.mention_everyone = everyone and "everyone" in parse


def _message_problem(message: FakeMessage) -> tuple[int, str] | None:
    """Discord's message limits: (error code, text) for the first one broken."""
    if not (
        message.content or message.embeds or message.files or message.components or message.poll
    ):
        return 50006, "Cannot send an empty message"
    invalid = 50035, "Invalid Form Body: "
    if len(message.content) > 2000:
        return invalid[0], invalid[1] + "content must be 2000 or fewer in length"
    if len(message.embeds) > 10 or len(message.files) > 10:
        return invalid[0], invalid[1] + "at most 10 embeds and 10 files"
    total = 0
    for embed in message.embeds:
        fields = embed.get("fields") or []
        texts = [
            embed.get("title"),
            embed.get("description"),
            (embed.get("footer") or {}).get("text"),
        ]
        texts += [(embed.get("author") or {}).get("name")]
        texts += [f.get(key) for f in fields for key in ("name", "value")]
        total += sum(len(t or "") for t in texts)
        sizes = [(texts[0], 256), (texts[1], 4096), (texts[2], 2048), (texts[3], 256)]
        sizes += [(f.get("name"), 256) for f in fields] + [(f.get("value"), 1024) for f in fields]
        if len(fields) > 25 or any(len(text or "") > limit for text, limit in sizes):
            return invalid[0], invalid[1] + "an embed text is too long, or over 25 fields"
    if total > 6000:
        return invalid[0], invalid[1] + "embeds exceed 6000 characters in total"
    rows = [c for c in message.components if c.get("type") == 1]
    if len(rows) > 5 or any(len(row.get("components") or []) > 5 for row in rows):
        return invalid[0], invalid[1] + "at most 5 action rows of at most 5 components"
    ids = message.custom_ids
    if len(ids) != len(set(ids)) or any(len(i) > 100 for i in ids):
        return invalid[0], invalid[1] + "custom ids must be unique and at most 100 characters"
    if any(len(b.get("label") or "") > 80 for b in message.buttons):
        return invalid[0], invalid[1] + "button labels must be 80 or fewer in length"
    return None


def _raise_file_limit(wanted: int = 8192) -> None:
    """Hundreds of simultaneous local connections need two descriptors each: best effort."""
    with contextlib.suppress(ValueError, OSError):
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
        if soft < target:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
