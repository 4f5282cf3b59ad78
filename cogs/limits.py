"""Discord's message limits, and fitting what the bot says into them.

Every builder goes through here, so a long prompt is shortened visibly ("…") instead of the
whole message being refused (400 50035 / 413 40005), and user text never turns into markdown,
masked links or pings. Limits: https://discord.com/developers/docs/resources/message.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TypeVar

import discord
from discord import app_commands

CONTENT = 2000
EMBEDS = 10
TITLE = 256
DESCRIPTION = 4096
FIELDS = 25
FIELD_NAME = 256
FIELD_VALUE = 1024
FOOTER = 2048
AUTHOR = 256
EMBED_TOTAL = 6000  # over all embeds of one message
FILES = 10  # per message
FILE_BYTES = 10 * 1024 * 1024  # one attachment: Discord's limit for bots in unboosted servers
REQUEST_BYTES = 25 * 1024 * 1024  # files in one request
CHOICES = 25  # autocomplete results
CHOICE_TEXT = 100  # characters of a choice's name and of a string value

T = TypeVar("T", str, int, float)


def clip(text: str, limit: int) -> str:
    """``text`` cut to ``limit`` characters, with "…" showing that it was cut."""
    if len(text) <= limit:
        return text
    cut = text[: limit - 1]
    if (len(cut) - len(cut.rstrip("\\"))) % 2:  # never leave an escape that eats the "…"
        cut = cut[:-1]
    return cut + "…"


def escape(text: str) -> str:
    """User text as plain text: no markdown, masked links, or mentions."""
    return discord.utils.escape_mentions(discord.utils.escape_markdown(text))


def shown(text: str, limit: int) -> str:
    """User text escaped, then clipped to ``limit`` (escaping first, so the limit holds)."""
    return clip(escape(text), limit)


def fit_content(text: str | None) -> str | None:
    return None if text is None else clip(text, CONTENT)


def cut_lines(lines: Sequence[str], limit: int, separator: str = "\n") -> str:
    """As many whole lines as fit in ``limit`` characters, then "… and N more"."""
    kept: list[str] = []
    for index, line in enumerate(lines):
        rest = len(lines) - index - 1
        tail = f"{separator}… and {rest} more" if rest else ""
        if len(separator.join([*kept, line])) + len(tail) > limit:
            more = f"… and {len(lines) - index} more"
            return separator.join([*kept, more]) if kept else clip(more, limit)
        kept.append(line)
    return separator.join(kept)


def fit_embed(embed: discord.Embed) -> discord.Embed:
    """Each text of ``embed`` within its own limit (fields beyond 25 are dropped)."""
    if embed.title:
        embed.title = clip(embed.title, TITLE)
    if embed.description:
        embed.description = clip(embed.description, DESCRIPTION)
    fields = embed.fields[:FIELDS]
    if fields:
        embed.clear_fields()
    for item in fields:
        name, value = clip(item.name or "​", FIELD_NAME), clip(item.value or "​", FIELD_VALUE)
        embed.add_field(name=name, value=value, inline=bool(item.inline))
    if embed.footer.text:
        embed.set_footer(text=clip(embed.footer.text, FOOTER), icon_url=embed.footer.icon_url)
    if embed.author.name:
        author = embed.author
        embed.set_author(name=clip(author.name or "", AUTHOR), url=author.url,
                         icon_url=author.icon_url)  # fmt: skip
    return embed


def fit_embeds(embeds: Sequence[discord.Embed], total: int = EMBED_TOTAL) -> list[discord.Embed]:
    """At most 10 embeds, each within its limits and all together within ``total`` characters.

    Over the total, the longest texts (titles, descriptions, field values) are shortened to a
    common length, the largest one that fits; field names and author names are kept whole unless
    they alone take half the total, and footers (the image id lives there) always are.
    """
    fitted = [fit_embed(embed) for embed in embeds[:EMBEDS]]
    names_too = sum(_fixed_length(embed, names_too=False) for embed in fitted) > total // 2
    fixed = sum(_fixed_length(embed, names_too) for embed in fitted)
    flexible = [len(text) for embed in fitted for text in _flexible_texts(embed, names_too)]
    if fixed + sum(flexible) <= total:
        return fitted
    cap = max(_water_level(flexible, max(total - fixed, 0)), 1)
    for embed in fitted:
        if embed.title and len(embed.title) > cap:
            embed.title = clip(embed.title, cap)
        if embed.description and len(embed.description) > cap:
            embed.description = clip(embed.description, cap)
        for index, item in enumerate(embed.fields):
            name, value = item.name or "", item.value or ""
            if names_too and len(name) > cap:
                name = clip(name, cap)
            if len(value) > cap:
                value = clip(value, cap)
            embed.set_field_at(index, name=name, value=value, inline=bool(item.inline))
        if names_too and embed.author.name and len(embed.author.name) > cap:
            author = embed.author
            embed.set_author(name=clip(author.name or "", cap), url=author.url,
                             icon_url=author.icon_url)  # fmt: skip
    return fitted


def embeds_length(embeds: Sequence[discord.Embed]) -> int:
    """The characters Discord counts toward the 6,000 of one message."""
    return sum(len(embed) for embed in embeds)


def fit_choices(choices: Sequence[app_commands.Choice[T]]) -> list[app_commands.Choice[T]]:
    """At most 25 autocomplete choices; names clipped to 100, over-long string values dropped
    (a clipped value would be a different value)."""
    fitted = [
        app_commands.Choice(name=clip(choice.name, CHOICE_TEXT) or "…", value=choice.value)
        for choice in choices
        if not (isinstance(choice.value, str) and len(choice.value) > CHOICE_TEXT)
    ]
    return fitted[:CHOICES]


def file_groups(sizes: Sequence[int], limit: int = REQUEST_BYTES) -> list[list[int]]:
    """Indexes of files grouped in order so each group fits one request (bytes and count).

    A single file over ``limit`` gets a group of its own; the caller decides how to show it.
    """
    groups: list[list[int]] = [[]]
    used = 0
    for index, size in enumerate(sizes):
        if groups[-1] and (used + size > limit or len(groups[-1]) >= FILES):
            groups.append([])
            used = 0
        groups[-1].append(index)
        used += size
    return groups if groups[0] else []


def _fixed_length(embed: discord.Embed, names_too: bool) -> int:
    """What ``fit_embeds`` keeps whole: footers, and unless ``names_too`` the names."""
    footer = len(embed.footer.text or "")
    if names_too:
        return footer
    return (
        footer + sum(len(item.name or "") for item in embed.fields) + len(embed.author.name or "")
    )


def _flexible_texts(embed: discord.Embed, names_too: bool) -> list[str]:
    texts = [embed.title or "", embed.description or ""]
    texts += [item.value or "" for item in embed.fields]
    if names_too:
        texts += [item.name or "" for item in embed.fields] + [embed.author.name or ""]
    return texts


def _water_level(lengths: Sequence[int], budget: int) -> int:
    """The largest cap such that sum(min(length, cap)) <= budget."""
    low, high = 0, max(lengths, default=0)
    while low < high:
        middle = (low + high + 1) // 2
        if sum(min(length, middle) for length in lengths) <= budget:
            low = middle
        else:
            high = middle - 1
    return low
