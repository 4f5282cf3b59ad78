"""Property-based tests: whatever a user sends, the answer is an image or a clear domain error,
and money moves only for images made. Hypothesis drives the service; a seeded generator drives
every /imagine option through the real Discord client."""

from __future__ import annotations

import asyncio
import random
import tempfile

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bot.catalog import load_catalog
from bot.config import load_settings
from bot.discord_bot import ImageBot
from bot.errors import BotError, InvalidRequest
from bot.requests import GenerateRequest
from bot.runtime import open_runtime
from bot.validation import ASPECT_RATIOS, clean_text, resolve_size, resolve_steps

CATALOG = load_catalog(None)
IMAGE_MODELS = [m.id for m in CATALOG.enabled_image_models()]
ANY_INT = st.one_of(st.none(), st.integers(-(2**40), 2**40), st.integers(-10, 5000))
ANY_FLOAT = st.one_of(st.none(), st.floats(allow_nan=True, allow_infinity=True), st.floats(0, 1))
ANY_TEXT = st.one_of(st.none(), st.text(max_size=300), st.sampled_from(["", " ", "\x00\x00\x00"]))

REQUESTS = st.fixed_dictionaries(
    {
        "prompt": st.one_of(st.text(max_size=2200), st.sampled_from(["a red fox", "ab", ""])),
        "model": st.one_of(st.none(), st.sampled_from([*IMAGE_MODELS, "nope", "flux-1-schnell"])),
        "negative_prompt": ANY_TEXT,
        "aspect_ratio": st.one_of(st.none(), st.sampled_from([*ASPECT_RATIOS, "5:4", "x"])),
        "width": ANY_INT,
        "height": ANY_INT,
        "seed": ANY_INT,
        "steps": ANY_INT,
        "guidance": ANY_FLOAT,
        "count": st.integers(-2, 6),
        "strength": ANY_FLOAT,
        "enhance": st.booleans(),
    }
)


@settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
@given(fields=REQUESTS)
def test_the_service_answers_any_request_with_an_image_or_a_domain_error(fields):
    async def run() -> None:
        with tempfile.TemporaryDirectory() as folder:
            env = {"DATA_DIR": folder, "QUOTA_USER_DAILY_USD": "100"}
            async with open_runtime(load_settings(env)) as runtime:
                try:
                    result = await runtime.service.generate(
                        GenerateRequest(user_id="u1", guild_id="g1", **fields)
                    )
                except BotError as error:
                    assert error.user_message and "Traceback" not in error.user_message
                    if isinstance(error, InvalidRequest):
                        assert error.field
                    made = 0
                else:
                    made = len(result.images)
                    assert 1 <= made <= 4
                    for image in result.images:
                        spec = CATALOG.get(image.model or "")
                        assert spec.min_side <= image.width <= spec.max_side
                        assert 3 <= len(image.prompt or "") <= 2048
                usage = await runtime.ledger.user_usage("u1", "g1")
                assert usage.images == made
                assert await runtime.ledger.audit() == {"counter_mismatches": 0, "open_jobs": 0}

    asyncio.run(run())


@given(st.text(max_size=500))
def test_clean_text_leaves_no_control_characters_or_double_spaces(text):
    cleaned = clean_text(text)
    assert cleaned == cleaned.strip() and "  " not in cleaned
    assert all(ch == " " or ch.isprintable() for ch in cleaned)


@given(model=st.sampled_from(IMAGE_MODELS), width=ANY_INT, height=ANY_INT,
       ratio=st.one_of(st.none(), st.sampled_from(ASPECT_RATIOS)))  # fmt: skip
def test_resolved_sizes_are_always_inside_the_models_limits(model, width, height, ratio):
    spec = CATALOG.get(model)
    try:
        w, h = resolve_size(spec, width, height, ratio)
    except InvalidRequest as error:
        assert error.field in ("width", "height", "aspect_ratio")
        return
    assert spec.min_side <= w <= spec.max_side and spec.min_side <= h <= spec.max_side
    if not spec.fixed_size and (width is None or height is None):
        assert w % spec.size_multiple == 0 and h % spec.size_multiple == 0


@given(model=st.sampled_from(IMAGE_MODELS), steps=ANY_INT)
def test_resolved_steps_are_always_inside_the_models_limits(model, steps):
    spec = CATALOG.get(model)
    try:
        resolved = resolve_steps(spec, steps)
    except InvalidRequest as error:
        assert error.field == "steps"
        return
    assert spec.min_steps <= resolved <= spec.max_steps


def random_imagine_options(rng: random.Random) -> dict[str, object]:
    """A random subset of every /imagine option, inside the ranges Discord itself enforces."""
    texts = ["a red fox", "ab", "x" * 2048, "🦊 fox \u202e reversed", "<@everyone> a cat",
             "`code` **bold**", "a\\nb c", "  padded prompt  "]  # fmt: skip
    candidates: dict[str, object] = {
        "model": rng.choice([*IMAGE_MODELS, "nope"]),
        "negative_prompt": rng.choice(["blurry", "🙈", "x" * 2048]),
        "aspect_ratio": rng.choice(ASPECT_RATIOS),
        "width": rng.choice([16, 256, 512, 1000, 1024, 2048, 4096]),
        "height": rng.choice([16, 256, 520, 1024, 4096]),
        "seed": rng.choice([0, 1, 2**32 - 1]),
        "steps": rng.choice([1, 4, 8, 20, 50, 100]),
        "count": rng.randint(1, 4),
        "image_id": rng.choice(["img_00000000000000000000", "nonsense"]),
        "strength": rng.choice([0.0, 0.5, 1.0]),
        "enhance": rng.random() < 0.3,
        "fresh": rng.random() < 0.5,
        "private": rng.random() < 0.3,
        "template": "missing",
        "separate": rng.random() < 0.5,
    }
    chosen = {k: v for k, v in candidates.items() if rng.random() < 0.3}
    return {"prompt": rng.choice(texts), **chosen}


async def test_random_imagine_options_always_get_one_clear_reply(fake_discord, bot_harness,
                                                                 make_settings):  # fmt: skip
    rng = random.Random(7)
    settings_ = make_settings(QUOTA_USER_DAILY_IMAGES=10_000, QUOTA_USER_DAILY_USD=1000,
                              QUOTA_GUILD_DAILY_USD=100_000, QUOTA_DAILY_NEURONS=10**9,
                              MAX_JOBS_PER_USER=64, MAX_QUEUE=1000,
                              DISCORD_CHANNEL_MESSAGES_PER_10S=0)  # fmt: skip
    async with open_runtime(settings_) as runtime:
        await bot_harness.start(ImageBot(runtime))
        # 60 replies in one channel at once exceed the channel-wide limit (the fake's 50 per
        # 10 s): the bot spaces them (DISCORD_CHANNEL_MESSAGES_PER_10S), 10 s instead of 1 s.
        # This test is about the replies' content, so the limit is off here (both sides).
        fake_discord.channel_rate = None
        cases = [random_imagine_options(rng) for _ in range(60)]
        interactions = await asyncio.gather(
            *(fake_discord.slash("imagine", c, user=fake_discord.member) for c in cases)
        )

        def final(interaction):  # type: ignore[no-untyped-def]
            return [m for m in interaction.messages if not m.deleted and not m.loading
                    and (m.embeds or m.ephemeral)]  # fmt: skip

        for case, interaction in zip(cases, interactions, strict=True):
            await interaction.wait_until(lambda i=interaction: final(i), 60)
            [reply] = final(interaction)
            assert "Something went wrong" not in reply.content, (case, reply.content)
            if not reply.embeds:
                assert reply.ephemeral and reply.content
        assert await runtime.ledger.audit() == {"counter_mismatches": 0, "open_jobs": 0}
