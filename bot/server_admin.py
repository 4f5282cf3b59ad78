"""What a server's admins manage: templates, quota overrides and the prompt blocklist.

Fronts call these; permissions are decided here from two facts the front supplies (who asks,
and whether they are an admin), so a rule means the same in Discord and over HTTP.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime

from bot.catalog import Catalog
from bot.days import next_utc_midnight
from bot.errors import Forbidden, InvalidRequest
from bot.ledger import Ledger, Limits, Template, Usage
from bot.ledger.records import new_id
from bot.requests import Remaining
from bot.validation import ASPECT_RATIOS, clean_prompt, clean_text, resolve_steps

MAX_TEMPLATE_NAME = 32
MAX_BLOCKLIST = 200
MAX_TERM = 100


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

    async def quota_status(self, guild_id: str, user_id: str) -> QuotaStatus:
        limits, used = await self.ledger.limits_and_usage(user_id, guild_id)
        guild_used = await self.ledger.usage("guild", guild_id) if guild_id else Usage()
        return QuotaStatus(limits, used, guild_used, next_utc_midnight(self.ledger.clock()))

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


def _check_non_negative(**values: int | None) -> None:
    for field, value in values.items():
        if value is not None and value < 0:
            raise InvalidRequest(
                field, f"{field.replace('_', ' ').capitalize()} cannot be negative."
            )
