"""The logging filter masks known secrets in messages, arguments and tracebacks."""

from __future__ import annotations

import io
import logging

import pytest

from bot.discord_bot import ImageBot
from bot.logs import RedactSecrets, configure_logging, mask_secrets, register_secret
from tests import test_api
from tests.conftest import FAKE_CF_TOKEN, FAKE_DISCORD_TOKEN

start_api = test_api.start_api  # the HTTP API fixture


@pytest.mark.secret_in_logs
def test_secrets_are_masked_everywhere_in_a_record():
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.addFilter(RedactSecrets([FAKE_CF_TOKEN, FAKE_DISCORD_TOKEN, ""]))
    logger = logging.getLogger("test.redaction")
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    try:
        logger.info("token=%s", FAKE_CF_TOKEN)
        logger.warning(f"header Authorization: Bot {FAKE_DISCORD_TOKEN}")
        try:
            raise RuntimeError(f"request failed with Bearer {FAKE_CF_TOKEN}")
        except RuntimeError:
            logger.exception("call failed")
    finally:
        logger.removeHandler(handler)
    output = stream.getvalue()
    assert FAKE_CF_TOKEN not in output and FAKE_DISCORD_TOKEN not in output
    assert output.count("***") == 3
    assert "RuntimeError" in output  # the traceback itself is kept


@pytest.fixture
def debug_output(capsys: pytest.CaptureFixture[str]):
    """The bot's own logging set-up at LOG_LEVEL=DEBUG, writing to a captured stderr."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    configure_logging("DEBUG", [FAKE_CF_TOKEN])
    try:
        yield lambda: capsys.readouterr().err
    finally:
        root.handlers[:] = handlers
        root.setLevel(level)


async def test_debug_logs_hold_no_api_key_webhook_secret_or_prompt(debug_output, start_api):
    api = await start_api(ALLOW_PRIVATE_URLS="true")
    prompt = "a zebra-striped lighthouse 7c1e"
    made = await api.post("/api/generate", {"prompt": prompt})
    assert made.status_code == 201
    await api.post("/api/batch/generate", {"prompts": [f"{prompt} again"]})
    await api.runtime.batches.wait_idle()
    [key] = await api.runtime.keys.list(api.user_id)
    logging.getLogger("bot.test").debug("a careless line: %s %s", api.key, key.webhook_secret)
    output = debug_output()
    assert "DEBUG" in output  # the level really was DEBUG
    assert api.key not in output
    assert key.webhook_secret not in output
    assert "zebra-striped" not in output
    assert "a careless line: *** ***" in output


def test_registered_secrets_and_api_keys_are_masked_wherever_they_appear():
    secret = "wh-" + "Q" * 40
    register_secret(secret)
    masked = mask_secrets(f"sig={secret}; key cfib_{'x' * 43}, other img_0123456789abcdef0123")
    assert masked == "sig=***; key ***, other img_0123456789abcdef0123"


async def test_debug_logs_of_the_discord_bot_hold_no_prompt(
    debug_output, fake_discord, bot_harness, local_runtime
):
    await bot_harness.start(ImageBot(local_runtime))
    interaction = await fake_discord.slash("imagine", {"prompt": "a quokka juggling 5e2b"},
                                           user=fake_discord.member)  # fmt: skip
    await interaction.wait_for_callback()
    await interaction.wait_for_message(lambda m: bool(m.embeds))
    output = debug_output()
    assert "DEBUG" in output and "discord" in output  # discord.py did log at DEBUG
    assert "quokka" not in output
