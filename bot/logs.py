"""Logging set-up with a last line of defence: known secret values are masked in every record.

Three kinds of secret are masked: the operator's (tokens and signing keys from the settings),
every API key (they all look like ``cfib_…``), and every webhook secret the bot creates or reads
(registered here by the code that touches them). Libraries that log what they are handed at
DEBUG (the database driver's statement parameters, discord.py's payloads, which hold prompts)
are kept at INFO whatever ``LOG_LEVEL`` says.
"""

from __future__ import annotations

import logging
import re
from collections import OrderedDict
from collections.abc import Iterable

MASK = "***"
API_KEY_PATTERN = re.compile(r"cfib_[A-Za-z0-9_-]{16,}")
_TOKEN_RUN = re.compile(r"[A-Za-z0-9_-]{16,}")
MAX_REGISTERED = 10_000
# Loggers that write parameters or payloads (secrets, prompts) at DEBUG.
CHATTY_LIBRARIES = ("aiosqlite", "discord.http", "discord.gateway", "discord.webhook.async_")

_registered: OrderedDict[str, None] = OrderedDict()


def register_secret(value: str | None) -> None:
    """Mask ``value`` in every later log record (bounded: the oldest are forgotten first)."""
    if not value or len(value) < 16:
        return
    _registered.pop(value, None)
    _registered[value] = None
    while len(_registered) > MAX_REGISTERED:
        _registered.popitem(last=False)


def mask_secrets(text: str, fixed: Iterable[str] = ()) -> str:
    """``text`` with every known secret replaced by ``***``."""
    for secret in fixed:
        text = text.replace(secret, MASK)
    text = API_KEY_PATTERN.sub(MASK, text)
    if _registered:  # registered secrets are URL-safe tokens: look them up run by run
        text = _TOKEN_RUN.sub(lambda m: MASK if m.group(0) in _registered else m.group(0), text)
    return text


class RedactSecrets(logging.Filter):
    """Replaces each secret by '***' in the formatted message and traceback."""

    def __init__(self, secrets: Iterable[str]) -> None:
        super().__init__()
        self.secrets = [s for s in secrets if s and len(s) >= 6]

    def _mask(self, text: str) -> str:
        return mask_secrets(text, self.secrets)

    def filter(self, record: logging.LogRecord) -> bool:
        record.msg = self._mask(record.getMessage())
        record.args = None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = self._mask(record.exc_text)
        return True


def quiet_chatty_libraries() -> None:
    """Keep the libraries that log secrets and prompts at DEBUG from doing so, at any level."""
    for name in CHATTY_LIBRARIES:
        library = logging.getLogger(name)
        if library.level < logging.INFO:  # NOTSET (inherit) included
            library.setLevel(logging.INFO)


def configure_logging(level: str, secrets: Iterable[str] = ()) -> None:
    handler = logging.StreamHandler()
    handler.setFormatter(
        logging.Formatter("%(asctime)s %(levelname)-7s %(name)s: %(message)s", "%H:%M:%S")
    )
    handler.addFilter(RedactSecrets(secrets))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    logging.getLogger("httpx").setLevel(logging.WARNING)
    logging.getLogger("httpcore").setLevel(logging.WARNING)
    quiet_chatty_libraries()
