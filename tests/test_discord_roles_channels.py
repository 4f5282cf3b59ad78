"""Issue 11 items 1 and 2 through the real client against the fake Discord: limits per role
(a member with several roles gets the most generous, their own override comes first,
clear-role falls back) exact under concurrency, and channel allow lists (threads follow their
parent) that refuse privately before anything is charged."""

from __future__ import annotations

import asyncio

from bot.discord_bot import ImageBot
from bot.errors import QuotaExceeded
from bot.requests import GenerateRequest
from tests.conftest import png
from tests.fakes.discord import FakeChannel


async def run(fake, name, options=None, user=None, **extra):  # type: ignore[no-untyped-def]
    interaction = await fake.slash(name, options or {}, user=user or fake.member, **extra)
    await interaction.wait_for_callback()
    return interaction


def text_of(message) -> str:  # type: ignore[no-untyped-def]
    return message.content + " ".join(str(e) for e in message.embeds)


async def reply(interaction, needle: str):  # type: ignore[no-untyped-def]
    return await interaction.wait_for_message(lambda m: needle in text_of(m))


async def admin(fake, name, options):  # type: ignore[no-untyped-def]
    return await run(fake, name, options, user=fake.admin)


async def test_most_generous_role_wins_own_override_first_clear_role_falls_back(
    fake_discord, bot_harness, make_settings
):  # type: ignore[no-untyped-def]
    from bot.runtime import open_runtime

    member = fake_discord.member
    artists = fake_discord.add_role(fake_discord.guild, "Artists", member)
    patrons = fake_discord.add_role(fake_discord.guild, "Patrons", member)
    async with open_runtime(make_settings()) as runtime:
        await bot_harness.start(ImageBot(runtime))
        await reply(await admin(fake_discord, "quota-admin set-server", {"user_daily_images": 1}),
                    "Updated")  # fmt: skip
        await reply(await admin(fake_discord, "quota-admin set-role",
                                {"role": artists, "daily_images": 2}), "Updated")  # fmt: skip
        await reply(await admin(fake_discord, "quota-admin set-role",
                                {"role": patrons, "daily_images": 3}), "Updated")  # fmt: skip
        shown = await reply(await run(fake_discord, "quota"), "Images today")
        assert "0 of 3" in text_of(shown) and f"<@&{patrons['id']}>" in text_of(shown)
        for n in range(3):
            made = await run(fake_discord, "imagine", {"prompt": f"picture number {n}"})
            await made.wait_for_message(lambda m: bool(m.embeds) and "footer" in m.embeds[0])
        over = await run(fake_discord, "imagine", {"prompt": "one too many"})
        assert (await reply(over, "3 of your 3 images")).ephemeral
        seen = await reply(await admin(fake_discord, "quota-admin show", {"member": member}),
                           "Images today")  # fmt: skip
        assert "3 of 3" in text_of(seen) and "most generous of their roles" in text_of(seen)

        await reply(await admin(fake_discord, "quota-admin set-user",
                                {"member": member, "daily_images": 5}), "Updated")  # fmt: skip
        own = await reply(await run(fake_discord, "quota"), "Images today")
        assert "3 of 5" in text_of(own) and "set for this member" in text_of(own)

        await reply(await admin(fake_discord, "quota-admin clear-role", {"role": patrons}),
                    "no limits of its own")  # fmt: skip
        status = await runtime.admin.quota_status(
            str(fake_discord.guild.id), str(member.id), (artists["id"], patrons["id"])
        )
        assert status.limits.user_images == 5 and status.images_rule.source == "member"
        await runtime.admin.set_user_quota(guild_id=str(fake_discord.guild.id),
                                           user_id=str(member.id), daily_images=None,
                                           daily_micro_usd=None)  # fmt: skip
        fallback = await reply(await run(fake_discord, "quota"), "Images today")
        assert "3 of 2" in text_of(fallback) and f"<@&{artists['id']}>" in text_of(fallback)
        again = await admin(fake_discord, "quota-admin clear-role", {"role": patrons})
        assert (await reply(again, "no limits of its own in this server")).ephemeral


async def test_role_limits_hold_exactly_under_a_burst(local_runtime):  # type: ignore[no-untyped-def]
    """Members holding several roles fire far more requests at once than their most generous
    role allows: exactly that many are made, the rest refused, nothing charged twice."""
    guild = "g1"
    await local_runtime.admin.set_guild_quota(guild_id=guild, daily_micro_usd=None,
                                              user_daily_images=1,
                                              user_daily_micro_usd=None)  # fmt: skip
    for role, images in (("r-small", 2), ("r-big", 4), ("r-none", None)):
        await local_runtime.admin.set_role_quota(guild_id=guild, role_id=role,
                                                 daily_images=images,
                                                 daily_micro_usd=None if images else 10**6)
    members = {"alice": ("r-small", "r-big", "r-none"), "bob": ("r-small",), "carol": ()}
    expected = {"alice": 4, "bob": 2, "carol": 1}

    async def one(user: str, n: int) -> bool:
        request = GenerateRequest(prompt=f"burst {user} {n}", user_id=user, guild_id=guild,
                                  role_ids=members[user], fresh=True)  # fmt: skip
        try:
            await local_runtime.service.generate(request)
        except QuotaExceeded:
            return False
        return True

    outcomes = await asyncio.gather(*(one(u, n) for u in members for n in range(10)))
    made = {u: sum(outcomes[i * 10:(i + 1) * 10]) for i, u in enumerate(members)}
    assert made == expected
    for user, count in expected.items():
        used = await local_runtime.ledger.user_usage(user, guild)
        assert used.images == count


async def test_allow_list_refuses_elsewhere_privately_threads_follow_parent(
    fake_discord, bot_harness, local_runtime
):  # type: ignore[no-untyped-def]
    guild = fake_discord.guild
    general = guild.channel
    art = FakeChannel(fake_discord.snowflake(), "art", guild.id, 0, 1)
    guild.channels.append(art)
    general_thread = fake_discord.add_thread(general, "chatter")
    art_thread = fake_discord.add_thread(art, "ideas")
    await bot_harness.start(ImageBot(local_runtime))
    assert (await reply(await admin(fake_discord, "channels list", {}), "Every channel")).ephemeral
    before = await run(fake_discord, "imagine", {"prompt": "anywhere while no list"})
    made_before = await before.wait_for_message(lambda m: bool(m.embeds))
    image_id = made_before.embeds[0]["footer"]["text"]
    await reply(await admin(fake_discord, "channels allow", {"channel": art}), "only in")
    assert f"<#{art.id}>" in text_of(await reply(await admin(fake_discord, "channels list", {}),
                                                 "<#"))  # fmt: skip
    spent = await local_runtime.ledger.user_usage(str(fake_discord.member.id), str(guild.id))

    for where in (general, general_thread):
        refused = await run(fake_discord, "imagine", {"prompt": "not here"}, channel=where)
        answer = await reply(refused, "Image commands work in")
        assert answer.ephemeral and f"<#{art.id}>" in answer.content
        upload = await run(fake_discord, "upload", {"image": ("x.png", png(64, 64))},
                           channel=where)  # fmt: skip
        assert (await reply(upload, f"<#{art.id}>")).ephemeral
    for action in ("reroll", "vary"):  # the buttons on a result posted before the list
        click = await fake_discord.click(made_before, f"img:{action}:{image_id}")
        await click.wait_for_callback()
        assert (await reply(click, f"<#{art.id}>")).ephemeral
    assert await local_runtime.ledger.user_usage(
        str(fake_discord.member.id), str(guild.id)
    ) == spent  # nothing reserved or charged for the refusals

    for where in (art, art_thread):
        made = await run(fake_discord, "imagine", {"prompt": "allowed here"}, channel=where)
        await made.wait_for_message(lambda m: bool(m.embeds))
    await reply(await admin(fake_discord, "channels deny", {"channel": art}), "every channel")
    anywhere = await run(fake_discord, "imagine", {"prompt": "anywhere again"}, channel=general)
    await anywhere.wait_for_message(lambda m: bool(m.embeds))
    not_listed = await admin(fake_discord, "channels deny", {"channel": art})
    assert (await reply(not_listed, "not on this server's allow list")).ephemeral
