"""Messages Discord accepts (issue 8, items 3 and 5): the fitting in cogs/limits.py, and through
the real client against the fake Discord (which refuses what Discord refuses) long prompts,
many images, big files, long lists and user text that tries to ping or link."""

from __future__ import annotations

import io
import os
import re

import discord
from discord import app_commands
from PIL import Image

from bot.discord_bot import ImageBot
from bot.providers.base import GeneratedImage, ImageRequest
from bot.providers.local import LocalProvider
from bot.requests import GenerateRequest
from bot.runtime import open_runtime
from cogs.limits import (
    CONTENT,
    EMBED_TOTAL,
    clip,
    cut_lines,
    embeds_length,
    escape,
    file_groups,
    fit_choices,
    fit_embeds,
    shown,
)
from tests.conftest import FAKE_SIGNING_KEY

MIB = 1024 * 1024
LONG_PROMPT = ("a lighthouse on a cliff at dusk, " * 60)[:1900]
UNESCAPED_LINK = re.compile(r"(?<!\\)\[x\]\(")


def result_messages(interaction):  # type: ignore[no-untyped-def]
    return [m for m in interaction.messages if m.embeds]


async def imagine(fake, options, **who):  # type: ignore[no-untyped-def]
    interaction = await fake.slash("imagine", options, **{"user": fake.member, **who})
    await interaction.wait_for_callback()
    return interaction


# -- the fitting itself --------------------------------------------------------------------------


def big_embed(n: int) -> discord.Embed:
    embed = discord.Embed(title="t" * 256, description="d" * 1500)
    embed.add_field(name="Prompt used", value="p" * 1024)
    embed.add_field(name="Link", value="[Hosted image](https://example.org/x)")
    return embed.set_footer(text=f"img_{n:020d}")


def test_fit_embeds_keeps_every_message_within_6000_and_the_ids_whole() -> None:
    embeds = fit_embeds([big_embed(n) for n in range(4)])
    assert embeds_length(embeds) <= EMBED_TOTAL
    assert embeds_length(embeds) > EMBED_TOTAL - 20  # shortened no more than needed
    assert [e.footer.text for e in embeds] == [f"img_{n:020d}" for n in range(4)]
    assert all(e.fields[1].value == "[Hosted image](https://example.org/x)" for e in embeds)
    assert all(e.description and e.description.endswith("…") for e in embeds)
    small = discord.Embed(title="short", description="fine").add_field(name="a", value="b")
    assert fit_embeds([small.copy()])[0].to_dict() == small.to_dict()


def test_fit_embeds_holds_every_single_limit() -> None:
    embed = discord.Embed(title="t" * 300, description="d" * 5000)
    for _ in range(30):
        embed.add_field(name="n" * 300, value="v" * 2000)
    embed.set_footer(text="f" * 3000).set_author(name="a" * 300)
    [fitted] = fit_embeds([embed])
    assert embeds_length([fitted]) <= EMBED_TOTAL and len(fitted.fields) == 25
    assert all(len(f.name or "") <= 256 and len(f.value or "") <= 1024 for f in fitted.fields)
    assert len(fitted.footer.text or "") <= 2048 and len(fitted.author.name or "") <= 256
    assert len(fit_embeds([discord.Embed(title="x")] * 12)) == 10


def test_escaped_text_is_plain_and_clipping_never_leaves_a_dangling_escape() -> None:
    text = "[x](https://evil.example) @everyone <@123456789012345678> **loud**"
    safe = escape(text)
    assert not UNESCAPED_LINK.search(safe) and "@everyone" not in safe and "**" not in safe
    assert "<@123456789012345678>" not in safe
    for limit in range(2, 40):
        cut = shown("*" * 100, limit)
        assert len(cut) <= limit and cut.endswith("…")
        assert (len(cut[:-1]) - len(cut[:-1].rstrip("\\"))) % 2 == 0
    assert clip("short", 10) == "short"


def test_cut_lines_says_how_many_more() -> None:
    lines = [f"line {n:03d} " + "x" * 40 for n in range(300)]
    text = cut_lines(lines, CONTENT)
    assert len(text) <= CONTENT
    kept = text.count("\n")
    assert text.endswith(f"… and {300 - kept} more")
    assert cut_lines(["a", "b"], 100) == "a\nb"
    assert len(cut_lines(["x" * 50], 10)) <= 10


def test_file_groups_and_choices() -> None:
    assert file_groups([9 * MIB] * 4) == [[0, 1], [2, 3]]
    assert file_groups([1] * 11) == [list(range(10)), [10]]
    assert file_groups([30 * MIB, 1]) == [[0], [1]]
    assert file_groups([]) == []
    many = [app_commands.Choice(name="n" * 150, value=f"v{n}") for n in range(30)]
    many.append(app_commands.Choice(name="too long a value", value="v" * 101))
    fitted = fit_choices(many)
    assert len(fitted) == 25 and all(len(c.name) == 100 for c in fitted)
    assert all(len(c.value) <= 100 for c in fitted)


# -- through the real client ---------------------------------------------------------------------


async def test_a_1900_character_prompt_with_count_4_is_delivered_whole(
    fake_discord, bot_harness, local_runtime
):
    """Local store: the four files are attached. Enhanced, so each embed carries a long
    "Prompt used" too: 4 × (title + prompt used + fields) is over Discord's 6,000."""
    await bot_harness.start(ImageBot(local_runtime))
    made = await imagine(fake_discord, {"prompt": LONG_PROMPT, "count": 4, "enhance": True,
                                        "separate": True})  # fmt: skip
    [message] = await made.wait_until(lambda: result_messages(made), timeout=30)
    assert len(message.embeds) == 4 and len(message.files) == 4 and made.rejected == []
    assert all(e["title"].endswith("…") for e in message.embeds)
    ids = [e["footer"]["text"] for e in message.embeds]
    assert len(await local_runtime.ledger.images_by_ids(ids)) == 4


async def test_with_a_signing_key_and_no_attachments_too(
    fake_discord, bot_harness, make_settings, cloudflare_env
):
    settings = make_settings(**cloudflare_env, CLOUDFLARE_IMAGES_SIGNING_KEY=FAKE_SIGNING_KEY,
                             QUOTA_USER_DAILY_USD=1)  # fmt: skip
    async with open_runtime(settings) as runtime:
        await bot_harness.start(ImageBot(runtime))
        made = await imagine(fake_discord, {"prompt": LONG_PROMPT, "count": 4, "enhance": True,
                                            "separate": True})  # fmt: skip
        [message] = await made.wait_until(lambda: result_messages(made), timeout=30)
        assert len(message.embeds) == 4 and not message.files and made.rejected == []
        links = [f["value"] for e in message.embeds for f in e["fields"] if f["name"] == "Link"]
        assert len(links) == 4 and all("sig=" in link or "exp=" in link for link in links)


class BigProvider(LocalProvider):
    """Incompressible 7 MB PNGs: four of them are more than one request may carry."""

    def __init__(self) -> None:
        side = 1536
        image = Image.frombytes("RGB", (side, side), os.urandom(side * side * 3))
        out = io.BytesIO()
        image.save(out, format="PNG", compress_level=1)
        self.data = out.getvalue()

    async def generate(self, request: ImageRequest) -> GeneratedImage:
        return GeneratedImage(self.data, "image/png", "png")


async def test_files_over_25_mib_go_in_parts_never_a_413(fake_discord, bot_harness, local_runtime):
    local_runtime.service.provider = big = BigProvider()
    assert 6 * MIB < len(big.data) < 10 * MIB
    await bot_harness.start(ImageBot(local_runtime))
    for private in (False, True):
        made = await imagine(fake_discord, {"prompt": f"noise {private}", "count": 4,
                                            "private": private, "separate": True})  # fmt: skip
        parts = await made.wait_until(
            lambda m=made: len(result_messages(m)) == 2 and result_messages(m), timeout=60
        )
        assert [len(p.files) for p in parts] == [3, 1] and made.rejected == []
        assert all(p.ephemeral == private for p in parts)
        assert all(len(p.custom_ids) == 5 * len(p.embeds) for p in parts)
        assert sum(len(p.embeds) for p in parts) == 4


async def test_user_text_is_escaped_and_pings_no_one(fake_discord, bot_harness, local_runtime):
    await bot_harness.start(ImageBot(local_runtime))
    member = fake_discord.member
    sneaky = f"[x](https://evil.example) @everyone <@{member.id}> **loud** pictures"
    made = await imagine(fake_discord, {"prompt": sneaky, "enhance": True})
    [message] = await made.wait_until(lambda: result_messages(made), timeout=30)
    [embed] = message.embeds
    fields = {f["name"]: f["value"] for f in embed["fields"]}
    for text in (embed["title"], fields["Prompt used"]):
        assert not UNESCAPED_LINK.search(text) and "@everyone" not in text, text
        assert f"<@{member.id}>" not in text and "**loud**" not in text
    details = await fake_discord.click(message, f"img:info:{embed['footer']['text']}")
    info = await details.wait_for_message(lambda m: bool(m.embeds))
    prompt_rows = [f["value"] for f in info.embeds[0]["fields"] if "rompt" in f["name"]]
    assert prompt_rows and not any(UNESCAPED_LINK.search(v) for v in prompt_rows)

    admin = fake_discord.admin
    named = await fake_discord.slash("templates create", {"name": "@everyone", "prompt": sneaky},
                                     user=admin)  # fmt: skip
    saved = await named.wait_for_message()
    added = await fake_discord.slash("blocklist add", {"term": f"<@{member.id}>"}, user=admin)
    assert "Blocked" in (await added.wait_for_message()).content
    listed = await fake_discord.slash("blocklist list", user=admin)
    blocked = await listed.wait_for_message(lambda m: "@" in m.content)
    for shown_message in (saved, blocked):
        assert "@everyone" not in shown_message.content
        assert f"<@{member.id}>" not in shown_message.content
    sent = [m for m in fake_discord.messages.values() if not m.loading]
    assert sent and all(m.allowed_mentions == {"parse": []} for m in sent)
    assert not any(m.mentions or m.mention_everyone for m in sent)


async def test_long_lists_are_cut_with_and_n_more(fake_discord, bot_harness, make_settings):
    settings = make_settings(QUOTA_USER_DAILY_IMAGES=100, QUOTA_USER_DAILY_USD=10)
    async with open_runtime(settings) as runtime:
        await bot_harness.start(ImageBot(runtime))
        member, admin = fake_discord.member, fake_discord.admin
        guild = str(fake_discord.guild.id)
        for n in range(200):
            await runtime.admin.block(guild, f"forbidden-term-number-{n:03d}")
        terms = await fake_discord.slash("blocklist list", user=admin)
        listed = await terms.wait_for_message()
        assert len(listed.content) <= CONTENT and re.search(r"… and \d+ more$", listed.content)
        for n in range(60):
            prompt = "{prompt} " + "y" * 300
            await runtime.admin.create_template(
                guild_id=guild, user_id=str(admin.id), name=f"style{n}", prompt=prompt
            )
        templates = await fake_discord.slash("templates list", user=member)
        shown_list = await templates.wait_for_message()
        assert "more" in shown_list.embeds[0]["description"]
        for n in range(8):
            await runtime.service.generate(GenerateRequest(
                prompt=f"picture {n} " + "z" * 150, user_id=str(member.id), guild_id=guild,
                count=4, model="@cf/stabilityai/stable-diffusion-xl-base-1.0",
                width=256, height=256))  # fmt: skip
        choices = await fake_discord.autocomplete("imagine", "image_id", "", {"prompt": "x"})
        assert len(choices) == 25 and all(len(c["name"]) <= 100 for c in choices)
