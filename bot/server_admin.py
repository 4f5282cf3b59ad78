"""What a server's admins manage: templates, quota overrides (per member and per role), the
prompt blocklist, the content rule and the channels generation answers in.

Fronts call these; permissions are decided here from two facts the front supplies (who asks,
and whether they are an admin), so a rule means the same in Discord and over HTTP.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from bot.catalog import Catalog
from bot.days import next_utc_midnight
from bot.errors import Forbidden, InvalidRequest, NotFound
from bot.ledger import Ledger, Limits, Template, Usage
from bot.ledger.records import new_id
from bot.ledger.servers import ADULT_CONTENT_RULES, DEFAULT_RULE
from bot.ledger.servers import LimitRule as LimitRule  # re-exported: fronts word the rule
from bot.requests import Remaining
from bot.validation import ASPECT_RATIOS, clean_prompt, clean_text, resolve_steps

MAX_TEMPLATE_NAME = 32
MAX_BLOCKLIST = 200
MAX_TERM = 100
MAX_ALLOWED_CHANNELS = 50


class PromptBlocked(Forbidden):
    code = "prompt_blocked"

    def __init__(self) -> None:
        super().__init__("This server does not allow that prompt. Nothing was charged.")


@dataclass(frozen=True)
class QuotaStatus:
    limits: Limits
    used: Usage
    guild_used: Usage
    resets_at: datetime
    images_rule: LimitRule = DEFAULT_RULE
    usd_rule: LimitRule = DEFAULT_RULE
    adult_content: str = "off"

    @property
    def left(self) -> Remaining:
        return Remaining.of(self.limits, self.used, self.resets_at)


def template_scope(guild_id: str, user_id: str) -> str:
    """Templates belong to a server; outside one (DMs, keys made outside a server) to the user."""
    return guild_id or f"user:{user_id}"


def prompt_matches(prompt: str, terms: list[str]) -> bool:
    """Whole-word, case-insensitive match of any blocked term (phrases allowed)."""
    folded = prompt.casefold()
    return any(re.search(rf"(?<!\w){re.escape(term.casefold())}(?!\w)", folded) for term in terms)


class ServerAdmin:
    def __init__(self, ledger: Ledger, catalog: Catalog, default_model: str) -> None:
        self.ledger = ledger
        self.catalog = catalog
        self.default_model = default_model

    # -- templates -----------------------------------------------------------------------

    async def create_template(
        self,
        *,
        guild_id: str,
        user_id: str,
        name: str,
        prompt: str,
        model: str | None = None,
        negative_prompt: str | None = None,
        aspect_ratio: str | None = None,
        steps: int | None = None,
    ) -> Template:
        clean_name = clean_text(name)
        if not 1 <= len(clean_name) <= MAX_TEMPLATE_NAME:
            raise InvalidRequest(
                "name", f"A template name is 1 to {MAX_TEMPLATE_NAME} characters long."
            )
        spec = self.catalog.get(model or self.default_model)
        if aspect_ratio is not None and aspect_ratio not in ASPECT_RATIOS:
            raise InvalidRequest(
                "aspect_ratio", f"Aspect ratio must be one of {', '.join(ASPECT_RATIOS)}."
            )
        if steps is not None:
            resolve_steps(spec, steps)
        negative = clean_text(negative_prompt) if negative_prompt else None
        template = Template(
            id=new_id("tpl"),
            guild_id=guild_id,
            name=clean_name,
            prompt=clean_prompt(prompt, spec.max_prompt_chars),
            created_by=user_id,
            created_at=self.ledger.now_iso(),
            model=spec.id if model else None,
            negative_prompt=negative or None,
            aspect_ratio=aspect_ratio,
            steps=steps,
        )
        await self.ledger.add_template(template)
        return template

    async def delete_template(
        self, *, guild_id: str, name: str, user_id: str, is_admin: bool
    ) -> Template:
        template = await self.ledger.get_template(guild_id, name)
        if template.created_by != user_id and not is_admin:
            raise Forbidden("Only the template's creator or an admin can delete it.")
        await self.ledger.delete_template(template.id)
        return template

    async def templates(self, guild_id: str, prefix: str = "") -> list[Template]:
        return await self.ledger.list_templates(guild_id, prefix)

    async def template(self, guild_id: str, name: str) -> Template:
        """By name (any case) or id."""
        return await self.ledger.get_template(guild_id, name)

    # -- quotas ---------------------------------------------------------------------------

    async def quota_status(
        self, guild_id: str, user_id: str, role_ids: Sequence[str] = ()
    ) -> QuotaStatus:
        """A member's limits, which rule each comes from, and today's use."""
        policy = await self.ledger.policy(user_id, guild_id, role_ids)
        guild_used = await self.ledger.usage("guild", guild_id) if guild_id else Usage()
        resets = next_utc_midnight(self.ledger.clock())
        return QuotaStatus(
            policy.limits, policy.usage, guild_used, resets, policy.images_rule, policy.usd_rule,
            policy.adult_content,
        )  # fmt: skip

    async def set_role_quota(
        self, *, guild_id: str, role_id: str, daily_images: int | None, daily_micro_usd: int | None
    ) -> None:
        """Limits for everyone holding the role (a member with several gets the most generous)."""
        _check_non_negative(daily_images=daily_images, daily_usd=daily_micro_usd)
        if daily_images is None and daily_micro_usd is None:
            raise InvalidRequest("daily_images", "Give daily_images, daily_usd or both.")
        await self.ledger.set_role_quota(guild_id, role_id, daily_images, daily_micro_usd)

    async def clear_role_quota(self, *, guild_id: str, role_id: str) -> None:
        if not await self.ledger.clear_role_quota(guild_id, role_id):
            raise NotFound("That role has no limits of its own in this server.")

    async def set_user_quota(
        self, *, guild_id: str, user_id: str, daily_images: int | None, daily_micro_usd: int | None
    ) -> None:
        _check_non_negative(daily_images=daily_images, daily_usd=daily_micro_usd)
        await self.ledger.set_user_quota(guild_id, user_id, daily_images, daily_micro_usd)

    async def set_guild_quota(
        self,
        *,
        guild_id: str,
        daily_micro_usd: int | None,
        user_daily_images: int | None,
        user_daily_micro_usd: int | None,
    ) -> None:
        _check_non_negative(
            daily_usd=daily_micro_usd,
            user_daily_images=user_daily_images,
            user_daily_usd=user_daily_micro_usd,
        )
        await self.ledger.set_guild_quota(
            guild_id, daily_micro_usd, user_daily_images, user_daily_micro_usd
        )

    async def reset_user(self, *, guild_id: str, user_id: str, reset_by: str) -> None:
        await self.ledger.reset_user_day(guild_id, user_id, reset_by)

    # -- blocklist ------------------------------------------------------------------------

    async def blocklist(self, guild_id: str) -> list[str]:
        return await self.ledger.blocklist(guild_id)

    async def block(self, guild_id: str, term: str) -> list[str]:
        cleaned = clean_text(term)
        if not 1 <= len(cleaned) <= MAX_TERM:
            raise InvalidRequest("term", f"A blocked term is 1 to {MAX_TERM} characters long.")
        terms = await self.ledger.blocklist(guild_id)
        if cleaned.casefold() not in (t.casefold() for t in terms):
            if len(terms) >= MAX_BLOCKLIST:
                raise InvalidRequest("term", f"The blocklist holds at most {MAX_BLOCKLIST} terms.")
            terms.append(cleaned)
            await self.ledger.set_blocklist(guild_id, terms)
        return terms

    async def unblock(self, guild_id: str, term: str) -> list[str]:
        terms = await self.ledger.blocklist(guild_id)
        kept = [t for t in terms if t.casefold() != clean_text(term).casefold()]
        if len(kept) == len(terms):
            raise InvalidRequest("term", "That term is not on this server's blocklist.")
        await self.ledger.set_blocklist(guild_id, kept)
        return kept

    # -- content rule -----------------------------------------------------------------------

    async def adult_content(self, guild_id: str) -> str:
        """'off' (every prompt is checked) or 'age_restricted' (unchecked in age-restricted
        channels); outside a server always 'off'."""
        return await self.ledger.adult_content(guild_id) if guild_id else "off"

    async def set_adult_content(self, guild_id: str, rule: str) -> None:
        if rule not in ADULT_CONTENT_RULES:
            raise InvalidRequest("adult_content", "Choose off or age-restricted channels only.")
        await self.ledger.set_adult_content(guild_id, rule)

    # -- where generation answers ------------------------------------------------------------

    async def allowed_channels(self, guild_id: str) -> list[str]:
        """The channels generation answers in (empty: every channel; none outside a server)."""
        return await self.ledger.allowed_channels(guild_id) if guild_id else []

    async def allow_channel(self, guild_id: str, channel_id: str) -> list[str]:
        allowed = await self.ledger.allowed_channels(guild_id)
        if channel_id not in allowed:
            if len(allowed) >= MAX_ALLOWED_CHANNELS:
                raise InvalidRequest(
                    "channel", f"A server allows at most {MAX_ALLOWED_CHANNELS} channels."
                )
            await self.ledger.allow_channel(guild_id, channel_id)
        return await self.ledger.allowed_channels(guild_id)

    async def deny_channel(self, guild_id: str, channel_id: str) -> list[str]:
        if not await self.ledger.deny_channel(guild_id, channel_id):
            raise InvalidRequest("channel", "That channel is not on this server's allow list.")
        return await self.ledger.allowed_channels(guild_id)

    async def channel_refusal(self, guild_id: str, channel_ids: Sequence[str]) -> str | None:
        """None if generation may answer in a channel known by ``channel_ids`` (the channel,
        and for a thread its parent); otherwise an allowed channel's id to point to."""
        allowed = await self.allowed_channels(guild_id)
        if not allowed or any(c in allowed for c in channel_ids):
            return None
        return allowed[0]


def _check_non_negative(**values: int | None) -> None:
    for field, value in values.items():
        if value is not None and value < 0:
            raise InvalidRequest(
                field, f"{field.replace('_', ' ').capitalize()} cannot be negative."
            )
