"""Templates, quota overrides and the blocklist, through ServerAdmin and the pipeline."""

from __future__ import annotations

import pytest

from bot.errors import Conflict, Forbidden, InvalidModel, InvalidRequest, NotFound, QuotaExceeded
from bot.requests import GenerateRequest
from bot.server_admin import PromptBlocked, prompt_matches

SDXL = "@cf/stabilityai/stable-diffusion-xl-base-1.0"


async def test_templates_are_per_server_unique_and_deleted_by_creator_or_admin(local_runtime):
    admin = local_runtime.admin
    created = await admin.create_template(guild_id="g1", user_id="alice", name=" Ink ",
                                          prompt="ink drawing of {prompt}", model=SDXL,
                                          aspect_ratio="3:4", steps=10)  # fmt: skip
    assert created.name == "Ink" and created.model == SDXL
    with pytest.raises(Conflict):
        await admin.create_template(guild_id="g1", user_id="bob", name="ink", prompt="other one")
    other_server = await admin.create_template(guild_id="g2", user_id="bob", name="ink",
                                               prompt="pencil sketch")  # fmt: skip
    assert other_server.model is None
    assert [t.name for t in await admin.templates("g1", "i")] == ["Ink"]
    with pytest.raises(Forbidden):
        await admin.delete_template(guild_id="g1", name="ink", user_id="bob", is_admin=False)
    await admin.delete_template(guild_id="g1", name="INK", user_id="mod", is_admin=True)
    with pytest.raises(NotFound):
        await admin.template("g1", "ink")


@pytest.mark.parametrize(
    ("fields", "error", "field"),
    [
        ({"name": ""}, InvalidRequest, "name"),
        ({"name": "x" * 33}, InvalidRequest, "name"),
        ({"prompt": "no"}, InvalidRequest, "prompt"),
        ({"model": "nope"}, InvalidModel, "model"),
        ({"aspect_ratio": "5:4"}, InvalidRequest, "aspect_ratio"),
        ({"model": SDXL, "steps": 99}, InvalidRequest, "steps"),
    ],
)
async def test_bad_templates_are_refused(local_runtime, fields, error, field):
    values = {"guild_id": "g1", "user_id": "u1", "name": "house", "prompt": "a house style"}
    values.update(fields)
    with pytest.raises(error) as raised:
        await local_runtime.admin.create_template(**values)
    assert raised.value.field == field
    assert await local_runtime.admin.templates("g1") == []


async def test_quota_overrides_apply_to_generation_and_reset_frees_today(local_runtime):
    admin, service = local_runtime.admin, local_runtime.service
    await admin.set_user_quota(guild_id="g1", user_id="u1", daily_images=1, daily_micro_usd=None)
    ask = GenerateRequest(prompt="a quota test", user_id="u1", guild_id="g1", fresh=True)
    await service.generate(ask)
    with pytest.raises(QuotaExceeded) as refused:
        await service.generate(ask)
    assert refused.value.limit == "user_daily_images"
    status = await admin.quota_status("g1", "u1")
    assert (status.limits.user_images, status.used.images) == (1, 1)
    assert status.guild_used.micro_usd == 634
    await admin.reset_user(guild_id="g1", user_id="u1", reset_by="mod")
    await service.generate(ask)  # allowed again today
    assert (await admin.quota_status("g1", "u1")).guild_used.micro_usd == 2 * 634


async def test_server_budget_caps_everyone(local_runtime):
    admin, service = local_runtime.admin, local_runtime.service
    await admin.set_guild_quota(guild_id="g1", daily_micro_usd=634, user_daily_images=None,
                                user_daily_micro_usd=None)  # fmt: skip
    await service.generate(GenerateRequest(prompt="first one", user_id="a", guild_id="g1"))
    with pytest.raises(QuotaExceeded) as refused:
        await service.generate(GenerateRequest(prompt="second one", user_id="b", guild_id="g1"))
    assert refused.value.limit == "guild_daily_usd"
    with pytest.raises(InvalidRequest):
        await admin.set_guild_quota(guild_id="g1", daily_micro_usd=-1, user_daily_images=None,
                                    user_daily_micro_usd=None)  # fmt: skip


async def test_blocklist_refuses_before_any_charge(local_runtime):
    admin, service = local_runtime.admin, local_runtime.service
    assert await admin.block("g1", "  Gore ") == ["Gore"]
    assert await admin.block("g1", "gore") == ["Gore"]  # no duplicates
    await admin.block("g1", "red fox")
    for prompt in ("some GORE here", "a red  fox in snow"):
        with pytest.raises(PromptBlocked):
            await service.generate(GenerateRequest(prompt=prompt, user_id="u1", guild_id="g1"))
    allowed = await service.generate(GenerateRequest(prompt="gorgeous red foxes", user_id="u1",
                                                     guild_id="g1"))  # fmt: skip
    assert allowed.images
    other = await service.generate(GenerateRequest(prompt="some gore here", user_id="u1",
                                                   guild_id="g2"))  # fmt: skip
    assert other.images  # another server's list does not apply
    assert await admin.unblock("g1", "GORE") == ["red fox"]
    with pytest.raises(InvalidRequest):
        await admin.unblock("g1", "gore")
    assert (await local_runtime.ledger.user_usage("u1", "g1")).images == 1


def test_prompt_matching_is_whole_word():
    assert prompt_matches("A Cat", ["cat"])
    assert not prompt_matches("concatenate", ["cat"])
    assert prompt_matches("c++ rules", ["c++"])
