"""The logging filter masks known secrets in messages, arguments and tracebacks."""

from __future__ import annotations

import io
import logging

import pytest

from bot.logs import RedactSecrets
from tests.conftest import FAKE_CF_TOKEN, FAKE_DISCORD_TOKEN


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
