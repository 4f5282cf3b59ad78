"""The 🖋 Edit button end to end: the real discord.py client against the fake Discord opens a
modal with the image's prompts filled in; submitting runs a new job with its other settings."""

from __future__ import annotations

from bot.discord_bot import ImageBot
from tests.test_discord_imagine import SDXL, has_result, imagine


def inputs_of(modal) -> dict[str, dict]:
    """The modal's text inputs by label."""
    return {row["components"][0]["label"]: row["components"][0] for row in modal["components"]}


async def usage_of(runtime, fake_discord, user):
    return await runtime.ledger.user_usage(str(user.id), str(fake_discord.guild.id))


async def test_edit_opens_the_prompts_and_runs_again_with_the_other_settings_after_a_restart(
    fake_discord, bot_harness, local_runtime
):
    await bot_harness.start(ImageBot(local_runtime))
    interaction = await imagine(fake_discord, {
        "prompt": "a paper boat", "model": SDXL, "width": 256, "height": 512, "steps": 12,
        "negative_prompt": "blurry",
    })  # fmt: skip
    message = await interaction.wait_for_message(has_result)
    image_id = message.embeds[0]["footer"]["text"]
    assert f"img:edit:{image_id}" in message.custom_ids
    await bot_harness.restart(ImageBot(local_runtime), expect_sync=False)

    opened = await fake_discord.click(message, f"img:edit:{image_id}", user=fake_discord.admin)
    assert (await opened.wait_for_callback()).type == 9  # a modal is the first answer
    fields = inputs_of(opened.modal)
    assert fields["Prompt"]["value"] == "a paper boat"
    assert fields["Negative prompt"]["value"] == "blurry"
    before = await usage_of(local_runtime, fake_discord, fake_discord.admin)

    submitted = await fake_discord.submit_modal(opened, {
        fields["Prompt"]["custom_id"]: "a paper plane", fields["Negative prompt"]["custom_id"]: "",
    }, user=fake_discord.admin)  # fmt: skip
    result = await submitted.wait_for_message(has_result)
    assert not result.ephemeral
    new = await local_runtime.ledger.get_image(result.embeds[0]["footer"]["text"])
    old = await local_runtime.ledger.get_image(image_id)
    assert new.id != image_id and new.user_id == str(fake_discord.admin.id)
    assert (new.prompt, new.negative_prompt) == ("a paper plane", None)
    assert (new.model, new.width, new.height, new.steps, new.guidance) == (
        old.model, old.width, old.height, old.steps, old.guidance
    )
    job = await local_runtime.ledger.get_job(new.job_id)
    assert job is not None and job.state == "settled" and job.images == 1 and job.micro_usd > 0
    after = await usage_of(local_runtime, fake_discord, fake_discord.admin)
    assert (after.images, after.micro_usd) == (before.images + 1, before.micro_usd + job.micro_usd)


async def test_edit_of_a_private_result_stays_private_and_a_bad_prompt_costs_nothing(
    fake_discord, bot_harness, local_runtime
):
    await bot_harness.start(ImageBot(local_runtime))
    interaction = await imagine(fake_discord, {"prompt": "a quiet harbour", "private": True})
    message = await interaction.wait_for_message(has_result)
    image_id = message.embeds[0]["footer"]["text"]

    opened = await fake_discord.click(message, f"img:edit:{image_id}")
    await opened.wait_for_callback()
    fields = inputs_of(opened.modal)
    assert list(fields) == ["Prompt"]  # the default model takes no negative prompt
    before = await usage_of(local_runtime, fake_discord, fake_discord.member)
    refused = await fake_discord.submit_modal(opened, {fields["Prompt"]["custom_id"]: "ab"})
    reply = await refused.wait_for_message(lambda m: "at least 3 characters" in m.content)
    assert reply.ephemeral
    assert await usage_of(local_runtime, fake_discord, fake_discord.member) == before

    opened = await fake_discord.click(message, f"img:edit:{image_id}")
    await opened.wait_for_callback()
    fields = inputs_of(opened.modal)
    submitted = await fake_discord.submit_modal(
        opened, {fields["Prompt"]["custom_id"]: "a loud harbour"}
    )
    result = await submitted.wait_for_message(has_result)
    assert result.ephemeral
    new = await local_runtime.ledger.get_image(result.embeds[0]["footer"]["text"])
    assert new.prompt == "a loud harbour"
