"""/gallery end to end: the real discord.py client against the fake Discord, images made by the
real service on the embedded backends: paging (also after a restart), only the requester
pages, the admins' server view, deleted images never listed, a working signed link."""

from __future__ import annotations

from urllib.parse import parse_qs, urlsplit

from bot.discord_bot import ImageBot
from bot.requests import GenerateRequest
from bot.runtime import Runtime

SDXL = "@cf/stabilityai/stable-diffusion-xl-base-1.0"


async def make_images(runtime: Runtime, user_id: int | str, guild_id: int | str, n: int,
                      label: str) -> list[str]:  # fmt: skip
    ids = []
    for index in range(n):
        result = await runtime.service.generate(GenerateRequest(
            prompt=f"{label} number {index}", user_id=str(user_id), guild_id=str(guild_id),
            model=SDXL, width=256, height=256, fresh=True,
        ))  # fmt: skip
        ids += [image.id for image in result.images]
    return ids


def shown_ids(embed: dict) -> list[str]:
    return [field["value"].split("`")[1] for field in embed["fields"] if "`" in field["value"]]


async def open_gallery(fake_discord, user, **options):
    interaction = await fake_discord.slash("gallery", options, user=user)
    return interaction, await interaction.wait_for_message(lambda m: bool(m.embeds))


async def test_gallery_pages_only_for_its_owner_and_after_a_restart(
    fake_discord, bot_harness, local_runtime
):
    member, admin, guild = fake_discord.member, fake_discord.admin, fake_discord.guild
    mine = await make_images(local_runtime, member.id, guild.id, 7, "lighthouse")
    theirs = await make_images(local_runtime, admin.id, guild.id, 2, "castle")
    await local_runtime.service.delete_image(mine[0], requester_id=str(member.id))
    await bot_harness.start(ImageBot(local_runtime))

    _, message = await open_gallery(fake_discord, member)
    assert message.ephemeral
    [embed] = message.embeds
    newest_first = list(reversed(mine[1:]))
    assert shown_ids(embed) == newest_first[:5]
    assert embed["footer"]["text"] == "Page 1 of 2 · 6 images"
    link = embed["description"].split("](")[1].split(")")[0]
    token = parse_qs(urlsplit(link).query)["t"][0]
    access = local_runtime.gallery.links.verify(token)
    assert (access.user_id, access.server) == (str(member.id), False)
    next_id = f"gallery:next:{member.id}:u:1"
    assert message.custom_ids == [f"gallery:prev:{member.id}:u:0", next_id]
    assert [b.get("disabled", False) for b in message.buttons] == [True, False]

    stranger = await fake_discord.click(message, next_id, user=admin)
    refusal = await stranger.wait_for_message(lambda m: "Only the person" in m.content)
    assert refusal.ephemeral and shown_ids(message.embeds[0]) == newest_first[:5]

    await bot_harness.restart(ImageBot(local_runtime), expect_sync=False)
    paged = await fake_discord.click(message, next_id, user=member)
    await paged.wait_for_callback()
    assert paged.callback_type == 7  # the gallery message itself is updated
    [embed] = message.embeds
    assert shown_ids(embed) == newest_first[5:]
    assert embed["footer"]["text"] == "Page 2 of 2 · 6 images"
    assert not set(shown_ids(embed)) & set(theirs)
    assert [b.get("disabled", False) for b in message.buttons] == [False, True]

    back = await fake_discord.click(message, f"gallery:prev:{member.id}:u:0", user=member)
    await back.wait_for_callback()
    assert shown_ids(message.embeds[0]) == newest_first[:5]


async def test_the_server_gallery_is_for_admins_only(fake_discord, bot_harness, local_runtime):
    member, admin, guild = fake_discord.member, fake_discord.admin, fake_discord.guild
    here = await make_images(local_runtime, member.id, guild.id, 2, "forest")
    here += await make_images(local_runtime, admin.id, guild.id, 1, "river")
    elsewhere = await make_images(local_runtime, member.id, "4242", 1, "desert")
    await bot_harness.start(ImageBot(local_runtime))

    refused = await fake_discord.slash("gallery", {"server": True}, user=member)
    reply = await refused.wait_for_message(lambda m: "Only server admins" in m.content)
    assert reply.ephemeral and not reply.embeds

    _, message = await open_gallery(fake_discord, admin, server=True)
    [embed] = message.embeds
    assert message.ephemeral and embed["title"] == "The server's gallery"
    assert sorted(shown_ids(embed)) == sorted(here)
    assert elsewhere[0] not in str(embed)
    token = parse_qs(urlsplit(embed["description"].split("](")[1].split(")")[0]).query)["t"][0]
    access = local_runtime.gallery.links.verify(token)
    assert (access.guild_id, access.server) == (str(guild.id), True)

    _, own = await open_gallery(fake_discord, member)  # a member's own gallery spans servers
    assert sorted(shown_ids(own.embeds[0])) == sorted([*here[:2], *elsewhere])


async def test_long_prompts_fit_discords_limits_and_ping_nobody(
    fake_discord, bot_harness, local_runtime
):
    member = fake_discord.member
    hostile = "@everyone **bold** [link](https://example.com) " + "long words " * 180
    for index in range(5):
        await make_images(local_runtime, member.id, fake_discord.guild.id, 1, f"{index} {hostile}")
    await bot_harness.start(ImageBot(local_runtime))
    interaction, message = await open_gallery(fake_discord, member)
    assert not interaction.rejected  # the fake refuses what Discord refuses (6,000 characters…)
    [embed] = message.embeds
    assert len(embed["fields"]) == 5
    assert all(len(field["name"]) <= 256 for field in embed["fields"])
    assert all("@\u200beveryone" in field["name"] for field in embed["fields"])
    assert all("\\*\\*bold" in field["name"] for field in embed["fields"])
