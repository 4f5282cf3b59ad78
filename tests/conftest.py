"""Shared fixtures: settings on a temporary DATA_DIR, a runtime on the embedded backends, and
a runtime wired to the fake Cloudflare over real sockets."""

from __future__ import annotations

import asyncio
import io
import json
import logging
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from bot.config import Settings, load_settings
from bot.providers.base import GeneratedImage, ImageRequest
from bot.providers.local import LocalProvider
from bot.runtime import Runtime, open_runtime
from tests.fakes.cloudflare import FakeCloudflare

# The fake Discord fixtures (fake_discord, bot_harness) for the Discord front's tests, and
# the live web app on 127.0.0.1 (live) for the synchronous HTTP tests.
# The throwaway PostgreSQL server (postgres_server, postgres_url) for the ledger's second
# dialect.
pytest_plugins = ("tests.fakes.discord", "tests.live_server", "tests.postgres_server")

FAKE_CF_TOKEN = "cfut_TEST-SECRET-token-0b7e41d9"
FAKE_DISCORD_TOKEN = "MTIz.TEST-SECRET-discord-token.4c2f"
FAKE_SIGNING_KEY = "TEST-SECRET-signing-key-93ad"

# Every recognisable fake secret the suite uses. After every test, none may appear in a log
# record (raw, before any masking), in anything the bot sent to the fake Discord, or in an HTTP
# API response (checked where the API is served, in tests/test_api.py).
SECRETS = (
    FAKE_CF_TOKEN,
    FAKE_DISCORD_TOKEN,
    FAKE_SIGNING_KEY,
    "MTIz.fake-discord-bot-token.test",  # tests/fakes/discord.py
    "cfut_SECRET-token-7f3a9c2e5b1d",  # tests/test_cloudflare.py
    "images-signing-key-42",
    "TEST-SECRET-pg-password-5e1",  # tests/postgres_server.py
)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "secret_in_logs: the test puts a secret in a log record on purpose"
    )
    config.addinivalue_line(
        "markers", "both_ledgers: run each test on SQLite and on PostgreSQL (ledger_backend)"
    )
    config.addinivalue_line(
        "markers", "sqlite_only: a test of SQLite itself, in a module marked both_ledgers"
    )


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """A test marked ``both_ledgers`` that reaches ``ledger_backend`` (through make_settings,
    local_runtime, ledger_location...) runs once per dialect: the one parametrized seam."""
    marked = metafunc.definition.get_closest_marker
    if "ledger_backend" in metafunc.fixturenames and marked("both_ledgers") and not marked(
        "sqlite_only"
    ):
        metafunc.parametrize("ledger_backend", ["sqlite", "postgresql"], indirect=True)


@pytest.fixture
def ledger_backend(request: pytest.FixtureRequest) -> str:
    """'sqlite' unless the test is marked ``both_ledgers`` (then each in turn)."""
    return str(getattr(request, "param", "sqlite"))


@pytest.fixture
def ledger_url(request: pytest.FixtureRequest, ledger_backend: str) -> str | None:
    """DATABASE_URL for the PostgreSQL case (a database of the test's own), else None."""
    if ledger_backend != "postgresql":
        return None
    return str(request.getfixturevalue("postgres_url"))


@pytest.fixture
def ledger_location(tmp_path: Path, ledger_url: str | None) -> Path | str:
    """What ``Ledger.open`` takes: a fresh SQLite file or the test's PostgreSQL database."""
    return ledger_url or tmp_path / "ledger.sqlite3"


class _RawRecords(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        text = record.getMessage()
        if record.exc_info:
            text += logging.Formatter().formatException(record.exc_info)
        self.lines.append(text)


@pytest.fixture(autouse=True)
def no_secret_leaves(request: pytest.FixtureRequest) -> Iterator[None]:
    """The suite-wide secrets check: logs (every level) and what the bot sent to Discord."""
    capture = _RawRecords()
    root = logging.getLogger()
    previous = root.level
    root.addHandler(capture)
    root.setLevel(logging.DEBUG)
    try:
        yield
    finally:
        root.removeHandler(capture)
        root.setLevel(previous)
    if request.node.get_closest_marker("secret_in_logs") is None:
        leaked = [line for line in capture.lines if any(s in line for s in SECRETS)]
        assert not leaked, f"a secret reached a log line: {leaked[0][:200]}"
    fake = request.node.funcargs.get("fake_discord")
    if fake is not None:
        sent = json.dumps([r.body for r in fake.requests], default=str)
        assert not any(s in sent for s in SECRETS), "a secret was sent to Discord"


def png(width: int = 64, height: int = 48, colour: str = "teal") -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (width, height), colour).save(out, format="PNG")
    return out.getvalue()


class CountingProvider(LocalProvider):
    """The local renderer, counting calls and optionally holding each one open."""

    def __init__(self, delay: float = 0.0) -> None:
        self.calls = 0
        self.delay = delay
        self.active = 0
        self.peak = 0

    async def generate(self, request: ImageRequest) -> GeneratedImage:
        self.calls += 1
        self.active += 1
        self.peak = max(self.peak, self.active)
        try:
            await asyncio.sleep(self.delay)
            return await super().generate(request)
        finally:
            self.active -= 1


@pytest.fixture
def make_settings(tmp_path: Path, ledger_url: str | None) -> Callable[..., Settings]:
    """Settings from a clean environment: DATA_DIR is the test's own folder; the ledger is
    on PostgreSQL when the test runs for it (``ledger_backend``). Prompts are not moderated
    unless a test asks (``MODERATION_MODEL=...``), so charges elsewhere stay exact."""

    def build(**env: Any) -> Settings:
        values = {"DATA_DIR": str(tmp_path / "data"), "WEB_PORT": "0", "MODERATION_MODEL": "off"}
        if ledger_url:
            values["DATABASE_URL"] = ledger_url
        values.update({k: str(v) for k, v in env.items()})
        return load_settings(values)

    return build


@pytest.fixture
async def local_runtime(make_settings: Callable[..., Settings]) -> AsyncIterator[Runtime]:
    async with open_runtime(make_settings()) as runtime:
        yield runtime


@pytest.fixture
async def fake_cloudflare() -> AsyncIterator[FakeCloudflare]:
    async with FakeCloudflare(api_token=FAKE_CF_TOKEN, account_id="acct-test") as fake:
        yield fake


@pytest.fixture
def cloudflare_env(fake_cloudflare: FakeCloudflare) -> dict[str, str]:
    return {
        "CLOUDFLARE_ACCOUNT_ID": fake_cloudflare.account_id,
        "CLOUDFLARE_API_TOKEN": FAKE_CF_TOKEN,
        "CLOUDFLARE_IMAGE_ACCOUNT_HASH": fake_cloudflare.account_hash,
        "CLOUDFLARE_API_BASE_URL": fake_cloudflare.api_base,
        "CLOUDFLARE_IMAGE_DELIVERY_URL": fake_cloudflare.delivery_base,
    }
