"""Templates and server policy: per-server, per-role and per-user quota overrides, the
blocklist, the content rule, the channels generation answers in, and the limits they resolve
to.

Portable SQL: template names compare without case in both dialects (SQLite's
``COLLATE NOCASE``, PostgreSQL's ``CITEXT``), so ``=``, ``LIKE`` and the unique constraint
behave alike; the blocklist is a JSON array in a TEXT column.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass

from bot.config import QuotaDefaults
from bot.errors import Conflict, NotFound
from bot.ledger.core import ConstraintViolation, LedgerDatabase, insert_statement
from bot.ledger.records import Limits, Template, Usage
from bot.ledger.usage import user_scope

POLICY_SQL = """
SELECT u.daily_images, u.daily_micro_usd, g.user_daily_images, g.user_daily_micro_usd,
       g.daily_micro_usd, c.images - COALESCE(r.images, 0),
       c.micro_usd - COALESCE(r.micro_usd, 0), c.milli_neurons, g.blocklist, g.adult_content
FROM (SELECT 1) AS one LEFT JOIN user_quotas u ON u.guild_id = ? AND u.user_id = ?
LEFT JOIN guild_settings g ON g.guild_id = ?
LEFT JOIN usage_counters c ON c.day = ? AND c.scope = 'user' AND c.scope_id = ?
LEFT JOIN quota_resets r ON r.day = c.day AND r.user_scope = c.scope_id
"""
SET_USER_QUOTA_SQL = """
INSERT INTO user_quotas (guild_id, user_id, daily_images, daily_micro_usd, updated_at)
VALUES (?, ?, ?, ?, ?)
ON CONFLICT (guild_id, user_id) DO UPDATE SET daily_images = excluded.daily_images,
    daily_micro_usd = excluded.daily_micro_usd, updated_at = excluded.updated_at
"""
SET_GUILD_QUOTA_SQL = """
INSERT INTO guild_settings (guild_id, daily_micro_usd, user_daily_images, user_daily_micro_usd,
                            updated_at) VALUES (?, ?, ?, ?, ?)
ON CONFLICT (guild_id) DO UPDATE SET daily_micro_usd = excluded.daily_micro_usd,
    user_daily_images = excluded.user_daily_images,
    user_daily_micro_usd = excluded.user_daily_micro_usd, updated_at = excluded.updated_at
"""
BLOCKLIST_SQL = "SELECT blocklist FROM guild_settings WHERE guild_id = ?"
SET_BLOCKLIST_SQL = """
INSERT INTO guild_settings (guild_id, blocklist, updated_at) VALUES (?, ?, ?)
ON CONFLICT (guild_id) DO UPDATE SET blocklist = excluded.blocklist,
    updated_at = excluded.updated_at
"""
SET_ADULT_CONTENT_SQL = """
INSERT INTO guild_settings (guild_id, adult_content, updated_at) VALUES (?, ?, ?)
ON CONFLICT (guild_id) DO UPDATE SET adult_content = excluded.adult_content,
    updated_at = excluded.updated_at
"""
ADULT_CONTENT_SQL = "SELECT adult_content FROM guild_settings WHERE guild_id = ?"
ADULT_CONTENT_RULES = ("off", "age_restricted")
ROLE_QUOTAS_SQL = (
    "SELECT role_id, daily_images, daily_micro_usd FROM role_quotas "
    "WHERE guild_id = ? AND role_id IN ({marks}) ORDER BY role_id"
)
SET_ROLE_QUOTA_SQL = """
INSERT INTO role_quotas (guild_id, role_id, daily_images, daily_micro_usd, updated_at)
VALUES (?, ?, ?, ?, ?)
ON CONFLICT (guild_id, role_id) DO UPDATE SET daily_images = excluded.daily_images,
    daily_micro_usd = excluded.daily_micro_usd, updated_at = excluded.updated_at
"""
CLEAR_ROLE_QUOTA_SQL = "DELETE FROM role_quotas WHERE guild_id = ? AND role_id = ?"
ALLOWED_CHANNELS_SQL = (
    "SELECT channel_id FROM allowed_channels WHERE guild_id = ? ORDER BY added_at, channel_id"
)
ALLOW_CHANNEL_SQL = """
INSERT INTO allowed_channels (guild_id, channel_id, added_at) VALUES (?, ?, ?)
ON CONFLICT (guild_id, channel_id) DO NOTHING
"""
DENY_CHANNEL_SQL = "DELETE FROM allowed_channels WHERE guild_id = ? AND channel_id = ?"
INSERT_TEMPLATE_SQL = insert_statement("templates", Template.COLUMNS)
TEMPLATE_SQL = "SELECT * FROM templates WHERE guild_id = ? AND (name = ? OR id = ?)"
TEMPLATES_SQL = "SELECT * FROM templates WHERE guild_id = ? AND name LIKE ? ORDER BY name LIMIT 100"
DELETE_TEMPLATE_SQL = "DELETE FROM templates WHERE id = ?"


@dataclass(frozen=True)
class LimitRule:
    """Where one of a member's daily limits comes from: ``member`` (an admin set theirs),
    ``role`` (the most generous of their roles; ``role_id`` names it), ``server`` (the
    server's member default) or ``default`` (the operator's)."""

    source: str
    role_id: str = ""


DEFAULT_RULE = LimitRule("default")


@dataclass(frozen=True)
class Policy:
    limits: Limits
    usage: Usage
    blocklist: list[str]
    images_rule: LimitRule = DEFAULT_RULE
    usd_rule: LimitRule = DEFAULT_RULE
    adult_content: str = "off"  # one of ADULT_CONTENT_RULES


RoleLimit = tuple[str, int | None]  # (role id, its limit, None where the role sets none)


def _resolve(
    own: int | None, roles: list[RoleLimit], server: int | None, default: int
) -> tuple[int, LimitRule]:
    """Own override, else the most generous role, else the server's, else the default."""
    if own is not None:
        return own, LimitRule("member")
    set_by_roles = [(limit, role) for role, limit in roles if limit is not None]
    if set_by_roles:
        limit, role = max(set_by_roles, key=lambda pair: pair[0])
        return limit, LimitRule("role", role)
    if server is not None:
        return server, LimitRule("server")
    return default, DEFAULT_RULE


def _first_set(*values: int | None) -> int:
    return next(v for v in values if v is not None)


class ServerPolicy:
    """Quota overrides and the blocklist, and the limits a user has in a server."""

    def __init__(self, db: LedgerDatabase, defaults: QuotaDefaults) -> None:
        self._db = db
        self.defaults = defaults

    async def policy(
        self, user_id: str, guild_id: str, role_ids: Sequence[str] = ()
    ) -> Policy:
        """The user's limits (and the rule each comes from), today's usage and the server's
        blocklist. ``role_ids`` are the member's roles in the server, from the interaction."""
        d = self.defaults
        row = await self._db.one(
            POLICY_SQL,
            (guild_id, user_id, guild_id, self._db.today(), user_scope(guild_id, user_id)),
        )
        user_images, user_usd, guild_user_images, guild_user_usd, guild_usd = row[:5]
        roles = await self.role_quotas(guild_id, role_ids) if guild_id and role_ids else []
        images, images_rule = _resolve(
            user_images, [(r, i) for r, i, _ in roles], guild_user_images, d.user_daily_images
        )
        usd, usd_rule = _resolve(
            user_usd, [(r, u) for r, _, u in roles], guild_user_usd, d.user_daily_micro_usd
        )
        limits = Limits(
            user_images=images,
            user_micro_usd=usd,
            guild_micro_usd=_first_set(guild_usd, d.guild_daily_micro_usd),
            milli_neurons=d.daily_milli_neurons,
            user_uploads=d.user_daily_uploads,
            user_upload_bytes=d.user_daily_upload_bytes,
        )
        usage = Usage(row[5] or 0, row[6] or 0, row[7] or 0)
        blocklist = json.loads(row[8]) if row[8] else []
        return Policy(limits, usage, blocklist, images_rule, usd_rule, row[9] or "off")

    async def role_quotas(
        self, guild_id: str, role_ids: Sequence[str]
    ) -> list[tuple[str, int | None, int | None]]:
        """The limits set for these roles: (role id, daily images, daily micro-dollars)."""
        ids = list(dict.fromkeys(role_ids))
        sql = ROLE_QUOTAS_SQL.format(marks=", ".join("?" * len(ids)))
        rows = await self._db.all(sql, (guild_id, *ids))
        return [(str(r[0]), r[1], r[2]) for r in rows]

    async def set_role_quota(
        self, guild_id: str, role_id: str, daily_images: int | None, daily_micro_usd: int | None
    ) -> None:
        params = (guild_id, role_id, daily_images, daily_micro_usd, self._db.now_iso())
        await self._db.write(SET_ROLE_QUOTA_SQL, params)

    async def clear_role_quota(self, guild_id: str, role_id: str) -> bool:
        return await self._db.write(CLEAR_ROLE_QUOTA_SQL, (guild_id, role_id)) == 1

    async def allowed_channels(self, guild_id: str) -> list[str]:
        """The channels generation answers in (empty: every channel)."""
        return [str(r[0]) for r in await self._db.all(ALLOWED_CHANNELS_SQL, (guild_id,))]

    async def allow_channel(self, guild_id: str, channel_id: str) -> None:
        await self._db.write(ALLOW_CHANNEL_SQL, (guild_id, channel_id, self._db.now_iso()))

    async def deny_channel(self, guild_id: str, channel_id: str) -> bool:
        return await self._db.write(DENY_CHANNEL_SQL, (guild_id, channel_id)) == 1

    async def set_user_quota(
        self, guild_id: str, user_id: str, daily_images: int | None, daily_micro_usd: int | None
    ) -> None:
        params = (guild_id, user_id, daily_images, daily_micro_usd, self._db.now_iso())
        await self._db.write(SET_USER_QUOTA_SQL, params)

    async def set_guild_quota(
        self,
        guild_id: str,
        daily_micro_usd: int | None,
        user_daily_images: int | None,
        user_daily_micro_usd: int | None,
    ) -> None:
        params = (guild_id, daily_micro_usd, user_daily_images, user_daily_micro_usd,
                  self._db.now_iso())  # fmt: skip
        await self._db.write(SET_GUILD_QUOTA_SQL, params)

    async def blocklist(self, guild_id: str) -> list[str]:
        row = await self._db.one(BLOCKLIST_SQL, (guild_id,))
        return list(json.loads(row[0])) if row else []

    async def set_blocklist(self, guild_id: str, terms: list[str]) -> None:
        await self._db.write(SET_BLOCKLIST_SQL, (guild_id, json.dumps(terms), self._db.now_iso()))

    async def adult_content(self, guild_id: str) -> str:
        row = await self._db.one(ADULT_CONTENT_SQL, (guild_id,))
        return str(row[0]) if row else "off"

    async def set_adult_content(self, guild_id: str, rule: str) -> None:
        await self._db.write(SET_ADULT_CONTENT_SQL, (guild_id, rule, self._db.now_iso()))


class TemplateTable:
    """A server's saved prompt templates."""

    def __init__(self, db: LedgerDatabase) -> None:
        self._db = db

    async def add(self, template: Template) -> None:
        try:
            await self._db.write(
                INSERT_TEMPLATE_SQL, tuple(getattr(template, c) for c in Template.COLUMNS)
            )
        except ConstraintViolation:
            raise Conflict(f"A template named {template.name!r} already exists here.") from None

    async def get(self, guild_id: str, name_or_id: str) -> Template:
        row = await self._db.one(TEMPLATE_SQL, (guild_id, name_or_id, name_or_id))
        if row is None:
            raise NotFound(f"No template named {name_or_id!r} in this server.")
        return Template.from_row(row)

    async def of_guild(self, guild_id: str, prefix: str) -> list[Template]:
        rows = await self._db.all(TEMPLATES_SQL, (guild_id, f"{prefix}%"))
        return [Template.from_row(r) for r in rows]

    async def delete(self, template_id: str) -> bool:
        return await self._db.write(DELETE_TEMPLATE_SQL, (template_id,)) == 1
