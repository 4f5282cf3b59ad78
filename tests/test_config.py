"""Settings: defaults, backend choice, validation, USD parsing, ``.env`` layering, secrecy."""

from __future__ import annotations

from pathlib import Path

import pytest

from bot.config import (
    QuotaDefaults,
    Settings,
    declared_variables,
    load_settings,
    read_environment,
)
from bot.config_values import Kind
from bot.errors import ConfigError
from tests.conftest import FAKE_CF_TOKEN, FAKE_DISCORD_TOKEN, FAKE_SIGNING_KEY

CREDENTIALS = {"CLOUDFLARE_ACCOUNT_ID": "acct-test", "CLOUDFLARE_API_TOKEN": FAKE_CF_TOKEN}
WITH_HASH = {**CREDENTIALS, "CLOUDFLARE_IMAGE_ACCOUNT_HASH": "hash-test"}
SECRET_LOOKING = "TEST-SECRET-value-7f3a9c"


def config_error(env: dict[str, str]) -> ConfigError:
    with pytest.raises(ConfigError) as caught:
        load_settings(env)
    return caught.value


# --------------------------------------------------------------------------- defaults


def test_defaults_match_the_readme() -> None:
    s = load_settings({})
    assert s.data_dir == Path("./data")
    assert s.database_path == Path("data/bot.sqlite3")
    assert s.web_host == "127.0.0.1"
    assert s.web_port == 8787
    assert s.public_base_url == "http://127.0.0.1:8787"
    assert s.default_model == "@cf/black-forest-labs/flux-1-schnell"
    assert s.enhance_model == "@cf/meta/llama-3.1-8b-instruct-fp8-fast"
    assert s.quotas == QuotaDefaults(
        user_daily_images=25,
        user_daily_micro_usd=50_000,
        guild_daily_micro_usd=1_000_000,
        daily_milli_neurons=10_000_000,
        user_daily_uploads=50,
        user_daily_upload_bytes=200 * 1024 * 1024,
    )
    assert s.images_storage_micro_usd == 50
    assert s.cache_scope == "guild"
    assert s.max_jobs_per_user == 2
    assert s.max_concurrent_jobs == 8
    assert s.max_queue == 100
    assert s.log_level == "INFO"
    assert s.cloudflare_api_base_url == "https://api.cloudflare.com/client/v4"
    assert s.cloudflare_image_delivery_url == "https://imagedelivery.net"
    assert s.cloudflare_account_requests_per_5min == 1000
    assert s.unpublished_model_micro_usd == 2_000
    assert (s.image_provider, s.image_store) == ("local", "local")
    assert s.models_file is None
    assert s.discord_token is None
    assert s.discord_guild_id is None
    assert s.admin_ids == frozenset()
    assert s.image_rate_per_minute == 600
    assert (s.variant_max_side, s.variant_max_pixels) == (4096, 4096 * 4096)
    assert (s.variant_workers, s.variant_cache_mb) == (2, 64)
    assert s.web_header_timeout_seconds == 10
    assert s.web_body_timeout_seconds == 60
    assert s.web_keepalive_seconds == 15
    assert s.web_max_request_mb == 11
    assert s.web_trusted_proxies == frozenset()


def test_trusted_proxies_are_ip_addresses() -> None:
    s = load_settings({"WEB_TRUSTED_PROXIES": "127.0.0.1, ::1,10.0.0.2"})
    assert s.web_trusted_proxies == frozenset({"127.0.0.1", "::1", "10.0.0.2"})
    error = config_error({"WEB_TRUSTED_PROXIES": "127.0.0.1,proxy.example"})
    assert error.variable == "WEB_TRUSTED_PROXIES"
    assert "proxy.example" not in error.user_message
    assert (s.discord_allow_dms, s.discord_allow_user_install) == (False, False)


def test_dms_and_user_installs_are_turned_on_explicitly() -> None:
    s = load_settings({"DISCORD_ALLOW_DMS": "TRUE", "DISCORD_ALLOW_USER_INSTALL": "true"})
    assert (s.discord_allow_dms, s.discord_allow_user_install) == (True, True)
    assert config_error({"DISCORD_ALLOW_DMS": "maybe"}).variable == "DISCORD_ALLOW_DMS"


@pytest.mark.parametrize(
    ("text", "value"),
    [("1", True), ("yes", True), ("on", True), ("TRUE", True), ("Yes", True), ("ON", True),
     ("0", False), ("no", False), ("off", False), ("FALSE", False), ("No", False)],
)
def test_switches_accept_the_usual_spellings(text: str, value: bool) -> None:
    assert load_settings({"ALLOW_PRIVATE_URLS": text}).allow_private_urls is value
    assert load_settings({"DISCORD_ALLOW_DMS": text}).discord_allow_dms is value


@pytest.mark.parametrize("text", ["maybe", "2", "y", "enabled", SECRET_LOOKING])
def test_a_bad_switch_is_one_line_naming_the_variable_and_the_spellings(text: str) -> None:
    error = config_error({"ALLOW_PRIVATE_URLS": text})
    assert error.variable == "ALLOW_PRIVATE_URLS"
    assert "\n" not in error.user_message
    assert error.user_message == (
        "ALLOW_PRIVATE_URLS: must be one of true/false, 1/0, yes/no, on/off (any case)"
    )  # the exact text: the value itself is never in it


def test_derived_defaults_follow_their_sources() -> None:
    s = load_settings({"DATA_DIR": "/srv/bot", "WEB_HOST": "192.0.2.10", "WEB_PORT": "9000"})
    assert s.database_path == Path("/srv/bot/bot.sqlite3")
    assert s.public_base_url == "http://192.0.2.10:9000"
    explicit = load_settings(
        {"DATABASE_PATH": "/var/ledger.db", "PUBLIC_BASE_URL": "https://img.example.org/"}
    )
    assert explicit.database_path == Path("/var/ledger.db")
    assert explicit.public_base_url == "https://img.example.org"


def test_values_are_read() -> None:
    s = load_settings(
        {
            "QUOTA_USER_DAILY_IMAGES": "7",
            "QUOTA_USER_DAILY_USD": "0.25",
            "QUOTA_GUILD_DAILY_USD": "3",
            "QUOTA_DAILY_NEURONS": "20000",
            "CACHE_SCOPE": "Global",
            "MAX_JOBS_PER_USER": "4",
            "MAX_CONCURRENT_JOBS": "16",
            "MAX_QUEUE": "10",
            "LOG_LEVEL": "debug",
            "MODELS_FILE": "models.toml",
            "DISCORD_GUILD_ID": "123456789012345678",
        }
    )
    assert s.quotas == QuotaDefaults(7, 250_000, 3_000_000, 20_000_000)
    assert s.cache_scope == "global"
    assert (s.max_jobs_per_user, s.max_concurrent_jobs, s.max_queue) == (4, 16, 10)
    assert s.log_level == "DEBUG"
    assert s.models_file == Path("models.toml")
    assert s.discord_guild_id == 123456789012345678


# --------------------------------------------------------------------------- backends


def test_auto_without_credentials_is_local() -> None:
    s = load_settings({})
    assert (s.image_provider, s.image_store) == ("local", "local")
    assert "provider=local" in s.backend_reason
    assert "store=local" in s.backend_reason
    assert "no Cloudflare credentials" in s.backend_reason


def test_auto_with_account_and_token_uses_workers_ai_but_a_local_store() -> None:
    s = load_settings(CREDENTIALS)
    assert (s.image_provider, s.image_store) == ("cloudflare", "local")
    assert "provider=cloudflare (auto: Cloudflare credentials are set)" in s.backend_reason
    assert "store=local" in s.backend_reason


def test_auto_with_the_account_hash_uses_cloudflare_images_too() -> None:
    s = load_settings(WITH_HASH)
    assert (s.image_provider, s.image_store) == ("cloudflare", "cloudflare")
    assert "store=cloudflare (auto" in s.backend_reason
    assert FAKE_CF_TOKEN not in s.backend_reason


@pytest.mark.parametrize(
    "partial",
    [
        {"CLOUDFLARE_ACCOUNT_ID": "acct-test"},
        {"CLOUDFLARE_API_TOKEN": FAKE_CF_TOKEN},
        {"CLOUDFLARE_API_TOKEN": FAKE_CF_TOKEN, "CLOUDFLARE_IMAGE_ACCOUNT_HASH": "hash-test"},
        {"CLOUDFLARE_ACCOUNT_ID": "  ", "CLOUDFLARE_API_TOKEN": FAKE_CF_TOKEN},
    ],
)
def test_auto_with_partial_credentials_stays_local(partial: dict[str, str]) -> None:
    s = load_settings(partial)
    assert (s.image_provider, s.image_store) == ("local", "local")


def test_explicit_choices_win_over_auto() -> None:
    local = load_settings({**WITH_HASH, "IMAGE_PROVIDER": "local", "IMAGE_STORE": "LOCAL"})
    assert (local.image_provider, local.image_store) == ("local", "local")
    assert local.backend_reason.count("set explicitly") == 2

    mixed = load_settings({**WITH_HASH, "IMAGE_PROVIDER": "cloudflare", "IMAGE_STORE": "local"})
    assert (mixed.image_provider, mixed.image_store) == ("cloudflare", "local")

    both = load_settings({**WITH_HASH, "IMAGE_PROVIDER": "cloudflare", "IMAGE_STORE": "cloudflare"})
    assert (both.image_provider, both.image_store) == ("cloudflare", "cloudflare")


@pytest.mark.parametrize(
    ("env", "variable"),
    [
        ({"IMAGE_PROVIDER": "cloudflare"}, "CLOUDFLARE_ACCOUNT_ID"),
        (
            {"IMAGE_PROVIDER": "cloudflare", "CLOUDFLARE_ACCOUNT_ID": "acct"},
            "CLOUDFLARE_API_TOKEN",
        ),
        ({**CREDENTIALS, "IMAGE_STORE": "cloudflare"}, "CLOUDFLARE_IMAGE_ACCOUNT_HASH"),
    ],
)
def test_explicit_cloudflare_requires_its_credentials(env: dict[str, str], variable: str) -> None:
    error = config_error(env)
    assert error.variable == variable
    assert variable in error.user_message
    assert FAKE_CF_TOKEN not in str(error)


# --------------------------------------------------------------------------- bad values


BAD_VALUES = [
    ("IMAGE_PROVIDER", SECRET_LOOKING),
    ("IMAGE_STORE", SECRET_LOOKING),
    ("CACHE_SCOPE", SECRET_LOOKING),
    ("LOG_LEVEL", SECRET_LOOKING),
    ("WEB_PORT", SECRET_LOOKING),
    ("WEB_PORT", "99999"),
    ("WEB_PORT", "-1"),
    ("MAX_JOBS_PER_USER", "0"),
    ("MAX_CONCURRENT_JOBS", SECRET_LOOKING),
    ("MAX_QUEUE", "0"),
    ("QUOTA_USER_DAILY_IMAGES", "2.5"),
    ("QUOTA_DAILY_NEURONS", SECRET_LOOKING),
    ("QUOTA_USER_DAILY_USD", "-0.05"),
    ("QUOTA_GUILD_DAILY_USD", "0.0000001"),
    ("DISCORD_GUILD_ID", SECRET_LOOKING),
    ("BOT_ADMIN_IDS", f"123,{SECRET_LOOKING}"),
    ("CLOUDFLARE_API_BASE_URL", f"ftp://{SECRET_LOOKING}.example"),
    ("CLOUDFLARE_IMAGE_DELIVERY_URL", SECRET_LOOKING),
    ("PUBLIC_BASE_URL", SECRET_LOOKING),
    ("UNPUBLISHED_MODEL_PRICE_USD", "-0.002"),
    ("CLOUDFLARE_ACCOUNT_REQUESTS_PER_5MIN", "0"),
]


def test_cloudflare_limits_and_unpublished_prices_are_read() -> None:
    s = load_settings(
        {"CLOUDFLARE_ACCOUNT_REQUESTS_PER_5MIN": "600", "UNPUBLISHED_MODEL_PRICE_USD": "0.0125"}
    )
    assert s.cloudflare_account_requests_per_5min == 600
    assert s.unpublished_model_micro_usd == 12_500
    assert load_settings({"UNPUBLISHED_MODEL_PRICE_USD": "OFF"}).unpublished_model_micro_usd is None


@pytest.mark.parametrize(("variable", "value"), BAD_VALUES)
def test_a_bad_value_names_the_variable_and_not_the_value(variable: str, value: str) -> None:
    error = config_error({variable: value})
    assert error.variable == variable
    assert error.user_message.startswith(f"{variable}: ")
    if len(value) >= 5:  # short ones like "0" occur in the explanation ("at most 100000")
        assert value not in str(error)
        assert value not in repr(error.details)


@pytest.mark.parametrize("variable", ["QUOTA_USER_DAILY_USD", "QUOTA_GUILD_DAILY_USD"])
def test_a_non_numeric_amount_is_not_echoed(variable: str) -> None:
    error = config_error({variable: SECRET_LOOKING})
    assert error.variable == variable
    assert SECRET_LOOKING not in error.user_message


def test_secret_credentials_are_never_in_an_error() -> None:
    env = {
        "CLOUDFLARE_API_TOKEN": FAKE_CF_TOKEN,
        "DISCORD_TOKEN": FAKE_DISCORD_TOKEN,
        "CLOUDFLARE_IMAGES_SIGNING_KEY": FAKE_SIGNING_KEY,
        "IMAGE_PROVIDER": "cloudflare",  # account id missing
    }
    error = config_error(env)
    assert error.variable == "CLOUDFLARE_ACCOUNT_ID"
    for secret in (FAKE_CF_TOKEN, FAKE_DISCORD_TOKEN, FAKE_SIGNING_KEY):
        assert secret not in str(error)


# --------------------------------------------------------------------------- amounts


@pytest.mark.parametrize(
    ("text", "micro"),
    [
        ("0.05", 50_000),
        ("1", 1_000_000),
        ("1.00", 1_000_000),
        ("0", 0),
        ("0.000001", 1),
        ("12.345678", 12_345_678),
        (" 0.10 ", 100_000),
    ],
)
def test_usd_amounts_are_exact(text: str, micro: int) -> None:
    quotas = load_settings({"QUOTA_USER_DAILY_USD": text, "QUOTA_GUILD_DAILY_USD": text}).quotas
    assert quotas.user_daily_micro_usd == micro
    assert quotas.guild_daily_micro_usd == micro
    assert type(quotas.user_daily_micro_usd) is int


@pytest.mark.parametrize("text", ["0.0000001", "0.0000005", "-1", "-0.05", "NaN", "inf", "1,5"])
def test_usd_amounts_that_are_refused(text: str) -> None:
    error = config_error({"QUOTA_USER_DAILY_USD": text})
    assert error.variable == "QUOTA_USER_DAILY_USD"


def test_a_too_precise_amount_says_why() -> None:
    error = config_error({"QUOTA_USER_DAILY_USD": "0.0000001"})
    assert "6 decimal places" in error.user_message


def test_blank_values_mean_the_default() -> None:
    s = load_settings({"QUOTA_USER_DAILY_USD": "", "WEB_PORT": "  ", "IMAGE_PROVIDER": ""})
    assert s.quotas.user_daily_micro_usd == 50_000
    assert s.web_port == 8787
    assert s.image_provider == "local"


# --------------------------------------------------------------------------- admin ids


@pytest.mark.parametrize(
    ("text", "ids"),
    [
        ("", frozenset()),
        ("42", frozenset({42})),
        ("1, 22 ,333", frozenset({1, 22, 333})),
        ("7,7,", frozenset({7})),
        ("123456789012345678,876543210987654321", {123456789012345678, 876543210987654321}),
    ],
)
def test_admin_ids(text: str, ids: frozenset[int]) -> None:
    assert load_settings({"BOT_ADMIN_IDS": text}).admin_ids == ids


@pytest.mark.parametrize("text", ["12;34", "12 34", "-5", "0x1f", "abc"])
def test_bad_admin_ids(text: str) -> None:
    assert config_error({"BOT_ADMIN_IDS": text}).variable == "BOT_ADMIN_IDS"


# --------------------------------------------------------------------------- .env


def test_read_environment_layers_dotenv_under_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    env_file = tmp_path / ".env"
    env_file.write_text(
        "# a comment\n"
        "QUOTA_USER_DAILY_IMAGES=0\n"
        "CACHE_SCOPE=off\n"
        'WEB_HOST="192.0.2.10"\n'
        "BOT_TEST_ONLY_IN_FILE=from-file\n",
        encoding="utf-8",
    )
    for name in ("CACHE_SCOPE", "WEB_HOST", "BOT_TEST_ONLY_IN_FILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("QUOTA_USER_DAILY_IMAGES", "5")

    merged = read_environment(env_file)
    assert merged["BOT_TEST_ONLY_IN_FILE"] == "from-file"
    assert merged["CACHE_SCOPE"] == "off"
    assert merged["WEB_HOST"] == "192.0.2.10"
    assert merged["QUOTA_USER_DAILY_IMAGES"] == "5"  # the real environment wins

    s = load_settings(merged)
    assert s.quotas.user_daily_images == 5
    assert s.cache_scope == "off"
    assert s.web_host == "192.0.2.10"


def test_read_environment_without_a_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BOT_TEST_MARKER", "here")
    for env_file in (tmp_path / "missing.env", None):
        merged = read_environment(env_file)
        assert merged["BOT_TEST_MARKER"] == "here"


def test_read_environment_default_is_the_working_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / ".env").write_text("BOT_TEST_FROM_CWD=yes\n", encoding="utf-8")
    monkeypatch.delenv("BOT_TEST_FROM_CWD", raising=False)
    monkeypatch.chdir(tmp_path)
    assert read_environment()["BOT_TEST_FROM_CWD"] == "yes"


# --------------------------------------------------------------------------- secrecy


def test_settings_repr_hides_secrets() -> None:
    s = load_settings(
        {
            **WITH_HASH,
            "DISCORD_TOKEN": FAKE_DISCORD_TOKEN,
            "CLOUDFLARE_IMAGES_SIGNING_KEY": FAKE_SIGNING_KEY,
        }
    )
    assert s.discord_token == FAKE_DISCORD_TOKEN
    assert s.cloudflare_api_token == FAKE_CF_TOKEN
    assert s.cloudflare_images_signing_key == FAKE_SIGNING_KEY
    for text in (repr(s), str(s), f"{s}", f"{s!r}"):
        for secret in (FAKE_DISCORD_TOKEN, FAKE_CF_TOKEN, FAKE_SIGNING_KEY):
            assert secret not in text
    assert "acct-test" in repr(s)  # the repr still shows the non-secret fields
    assert isinstance(s, Settings)


# --------------------------------------------------------------------------- documentation

ROOT = Path(__file__).resolve().parent.parent


def _env_example() -> dict[str, str]:
    lines = (ROOT / ".env.example").read_text(encoding="utf-8").splitlines()
    pairs = [line.split("=", 1) for line in lines if line and not line.startswith("#")]
    return {name.strip(): value.strip() for name, value in pairs}


def _readme_table() -> dict[str, str]:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    section = text.split("## Configuration", 1)[1].split("\n## ", 1)[0]
    rows = [line.split("|") for line in section.splitlines() if line.startswith("| `")]
    return {cells[1].strip().strip("`"): cells[2].strip() for cells in rows}


def test_every_declared_variable_has_a_kind_and_a_meaning() -> None:
    declared = list(declared_variables())
    assert len({v.name for v in declared}) == len(declared) > 40
    assert all(v.doc and isinstance(v.kind, Kind) for v in declared)


def test_env_example_documents_exactly_the_declared_variables_with_their_defaults() -> None:
    documented = _env_example()
    declared = {v.name: v for v in declared_variables()}
    assert set(documented) == set(declared)
    for name, spec in declared.items():
        assert documented[name] == (spec.default or ""), name


def test_the_readme_table_documents_exactly_the_declared_variables_with_their_defaults() -> None:
    documented = _readme_table()
    declared = {v.name: v for v in declared_variables()}
    assert set(documented) == set(declared)
    for name, spec in declared.items():
        shown = spec.default if spec.derived is None else spec.derived
        assert documented[name] == (f"`{shown}`" if shown is not None else "—"), name


def test_the_declared_defaults_are_the_defaults_the_code_uses() -> None:
    """Reading every documented default explicitly gives exactly the settings of an empty env."""
    explicit = {v.name: v.default for v in declared_variables() if v.default is not None}
    assert load_settings(explicit) == load_settings({})
