"""Settings: read once from the environment (and a ``.env`` file) in ``main()``, never at import.

Every variable is declared once, on the field it fills (name, type, default text, meaning);
reading, the typed defaults and the documentation check (``.env.example``, the README table)
all come from that declaration. A bad value raises ConfigError, which names the variable and
what is wrong, never the value (it may be a secret).
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field, fields, is_dataclass, replace
from pathlib import Path
from typing import Any, Literal

from dotenv import dotenv_values

from bot.config_values import (
    MAX_SHARDS,
    Addresses,
    Choice,
    FilePath,
    Flag,
    Integer,
    Kind,
    PostgresUrl,
    ShardIds,
    Snowflake,
    Snowflakes,
    Text,
    Url,
    Usd,
)
from bot.errors import ConfigError

Backend = Literal["cloudflare", "local"]
CacheScope = Literal["guild", "global", "off"]

MEGABYTE = 1024 * 1024
SECRET_VARIABLES = (
    "DISCORD_TOKEN", "CLOUDFLARE_API_TOKEN", "CLOUDFLARE_IMAGES_SIGNING_KEY", "GALLERY_SECRET",
    "DATABASE_URL",
)


# --------------------------------------------------------------------------- the declaration


@dataclass(frozen=True)
class Variable:
    """One environment variable: its name, kind, default as written in the docs, meaning.

    ``default`` None means unset; ``derived`` describes a default computed from others
    (written as the README writes it, e.g. ``$DATA_DIR/bot.sqlite3``).
    """

    name: str
    kind: Kind
    default: str | None
    doc: str
    derived: str | None = None


def variable(
    name: str,
    kind: Kind,
    default: str | None,
    doc: str,
    *,
    derived: str | None = None,
    secret: bool = False,
) -> Any:
    """A Settings field read from ``name``; its typed default is ``default`` parsed."""
    typed = kind.unset if default is None else kind.parse(name, default)
    return field(
        default=typed,
        repr=not secret,
        metadata={"variable": Variable(name, kind, default, doc, derived)},
    )


@dataclass(frozen=True)
class QuotaDefaults:
    user_daily_images: int = variable(
        "QUOTA_USER_DAILY_IMAGES", Integer(), "25", "images per user per server per UTC day"
    )
    user_daily_micro_usd: int = variable(
        "QUOTA_USER_DAILY_USD", Usd(), "0.05", "dollars per user per server per UTC day"
    )
    guild_daily_micro_usd: int = variable(
        "QUOTA_GUILD_DAILY_USD", Usd(), "1.00", "dollars per server per UTC day"
    )
    daily_milli_neurons: int = variable(
        "QUOTA_DAILY_NEURONS", Integer(scale=1000), "10000", "Neurons per UTC day, whole bot"
    )
    user_daily_uploads: int = variable(
        "QUOTA_USER_DAILY_UPLOADS", Integer(), "50", "uploads per user per UTC day"
    )
    user_daily_upload_bytes: int = variable(
        "QUOTA_USER_DAILY_UPLOAD_MB",
        Integer(maximum=2**40, scale=MEGABYTE),
        "200",
        "megabytes of uploads per user per UTC day",
    )


BACKENDS = Choice(("auto", "cloudflare", "local"))


@dataclass(frozen=True)
class Settings:
    data_dir: Path = variable("DATA_DIR", FilePath(), "./data", "database and local images")
    database_path: Path = variable(
        "DATABASE_PATH", FilePath(), None, "the SQLite ledger", derived="$DATA_DIR/bot.sqlite3"
    )
    # Set: the ledger is on this PostgreSQL server instead (the password is never shown).
    database_url: str | None = variable(
        "DATABASE_URL", PostgresUrl(), None, "a PostgreSQL ledger instead", secret=True
    )
    discord_token: str | None = variable(
        "DISCORD_TOKEN", Text(), None, "the bot's token", secret=True
    )
    discord_guild_id: int | None = variable(
        "DISCORD_GUILD_ID", Snowflake(), None, "sync commands to this server only"
    )
    # Where the commands are offered besides servers that installed the bot: both spend the
    # operator's Cloudflare money, so both are off unless turned on.
    discord_allow_dms: bool = variable(
        "DISCORD_ALLOW_DMS", Flag(), "false", "offer the commands in DMs"
    )
    discord_allow_user_install: bool = variable(
        "DISCORD_ALLOW_USER_INSTALL", Flag(), "false", "offer the commands to user installs"
    )
    # Unset: one gateway connection, as discord.py chooses. Set: discord.py's AutoShardedBot
    # runs SHARD_IDS (all of SHARD_COUNT when unset) in this process; see "Running at scale".
    shard_count: int | None = variable(
        "SHARD_COUNT", Integer(1, MAX_SHARDS), None, "shards of the whole bot, all processes"
    )
    shard_ids: tuple[int, ...] | None = variable(
        "SHARD_IDS", ShardIds(), None, "the shards this process runs (all when unset)"
    )
    admin_ids: frozenset[int] = variable(
        "BOT_ADMIN_IDS", Snowflakes(), None, "user ids treated as admins everywhere"
    )
    cloudflare_account_id: str | None = variable(
        "CLOUDFLARE_ACCOUNT_ID", Text(), None, "Cloudflare account id"
    )
    cloudflare_api_token: str | None = variable(
        "CLOUDFLARE_API_TOKEN", Text(), None, "Workers AI and Images token", secret=True
    )
    cloudflare_image_account_hash: str | None = variable(
        "CLOUDFLARE_IMAGE_ACCOUNT_HASH", Text(), None, "the imagedelivery.net account hash"
    )
    cloudflare_images_signing_key: str | None = variable(
        "CLOUDFLARE_IMAGES_SIGNING_KEY", Text(), None, "Images URL signing key", secret=True
    )
    cloudflare_api_base_url: str = variable(
        "CLOUDFLARE_API_BASE_URL", Url(), "https://api.cloudflare.com/client/v4", "API base"
    )
    cloudflare_image_delivery_url: str = variable(
        "CLOUDFLARE_IMAGE_DELIVERY_URL", Url(), "https://imagedelivery.net", "delivery base"
    )
    cloudflare_timeout_seconds: int = variable(
        "CLOUDFLARE_TIMEOUT_SECONDS", Integer(1, 600), "120", "one Cloudflare call at most"
    )
    cloudflare_account_requests_per_5min: int = variable(
        "CLOUDFLARE_ACCOUNT_REQUESTS_PER_5MIN",
        Integer(1, 100_000),
        "1000",
        "Cloudflare API requests per 5 minutes, whole account",
    )
    # Declared as auto/cloudflare/local; load_settings resolves auto to a Backend.
    image_provider: Backend = variable("IMAGE_PROVIDER", BACKENDS, "auto", "image generator")
    image_store: Backend = variable("IMAGE_STORE", BACKENDS, "auto", "image host")
    backend_reason: str = ""
    web_host: str = variable("WEB_HOST", Text(), "127.0.0.1", "the web server's address")
    web_port: int = variable("WEB_PORT", Integer(0, 65535), "8787", "the web server's port")
    public_base_url: str = variable(
        "PUBLIC_BASE_URL",
        Url(),
        None,
        "how others reach the web server",
        derived="http://WEB_HOST:WEB_PORT",
    )
    default_model: str = variable(
        "DEFAULT_MODEL", Text(), "@cf/black-forest-labs/flux-1-schnell", "the default model"
    )
    enhance_model: str = variable(
        "ENHANCE_MODEL", Text(), "@cf/meta/llama-3.1-8b-instruct-fp8-fast", "prompt rewriter"
    )
    # None: prompts are never checked (the server's content rule then has nothing to enforce).
    moderation_model: str | None = variable(
        "MODERATION_MODEL",
        Text(off_allowed=True),
        "@cf/meta/llama-guard-3-8b",
        "checks prompts against the server's content rules; off: no check",
    )
    models_file: Path | None = variable("MODELS_FILE", FilePath(), None, "catalog overrides")
    # None: such models hidden until priced.
    unpublished_model_micro_usd: int | None = variable(
        "UNPUBLISHED_MODEL_PRICE_USD",
        Usd(off_allowed=True),
        "0.002",
        "per image, for a model without a published price",
    )
    quotas: QuotaDefaults = QuotaDefaults()
    cache_scope: CacheScope = variable(
        "CACHE_SCOPE", Choice(("guild", "global", "off")), "guild", "who shares cached images"
    )
    max_jobs_per_user: int = variable(
        "MAX_JOBS_PER_USER", Integer(1, 64), "2", "jobs running at once per user"
    )
    max_queue: int = variable("MAX_QUEUE", Integer(1, 100_000), "100", "waiting jobs")
    max_concurrent_jobs: int = variable(
        "MAX_CONCURRENT_JOBS", Integer(1, 1024), "8", "jobs running at once overall"
    )
    job_lease_seconds: int = variable(
        "JOB_LEASE_SECONDS",
        Integer(1, 3600),
        "60",
        "a process renews its lease every third of this; when one stops (killed, machine "
        "lost), another closes its open jobs within about this long",
    )
    shutdown_grace_seconds: int = variable(
        "SHUTDOWN_GRACE_SECONDS",
        Integer(0, 3600),
        "25",
        "on SIGTERM/SIGINT, how long running jobs may finish before the rest are refunded",
    )
    discord_channel_messages_per_10s: int = variable(
        "DISCORD_CHANNEL_MESSAGES_PER_10S",
        Integer(0, 10_000),
        "40",
        "results sent in one channel per 10 s",
    )
    api_rate_per_minute: int = variable(
        "API_RATE_PER_MINUTE", Integer(1, 100_000), "60", "API requests per key per minute"
    )
    placeholder_daily_images: int = variable(
        "PLACEHOLDER_DAILY_IMAGES", Integer(), "50", "anonymous placeholder images a day"
    )
    image_rate_per_minute: int = variable(
        "IMAGE_RATE_PER_MINUTE",
        Integer(1, 1_000_000),
        "600",
        "anonymous image requests per address per minute",
    )
    web_trusted_proxies: frozenset[str] = variable(
        "WEB_TRUSTED_PROXIES", Addresses(), None, "reverse proxies in front of the server"
    )
    variant_max_side: int = variable(
        "VARIANT_MAX_SIDE", Integer(16, 12_000), "4096", "longest side the server renders"
    )
    variant_max_pixels: int = variable(
        "VARIANT_MAX_PIXELS", Integer(256, 100_000_000), "16777216", "most pixels rendered"
    )
    variant_workers: int = variable(
        "VARIANT_WORKERS", Integer(1, 64), "2", "threads rendering variants"
    )
    variant_cache_mb: int = variable(
        "VARIANT_CACHE_MB", Integer(0, 16_384), "64", "memory for rendered variants"
    )
    web_header_timeout_seconds: int = variable(
        "WEB_HEADER_TIMEOUT_SECONDS", Integer(1, 600), "10", "request line and headers within"
    )
    web_body_timeout_seconds: int = variable(
        "WEB_BODY_TIMEOUT_SECONDS", Integer(1, 3600), "60", "request body within"
    )
    web_keepalive_seconds: int = variable(
        "WEB_KEEPALIVE_SECONDS", Integer(1, 3600), "15", "idle connections closed after"
    )
    web_max_request_mb: int = variable(
        "WEB_MAX_REQUEST_MB", Integer(1, 1024), "11", "the largest request body"
    )
    # Per upload, on Cloudflare: $5 per 100,000 stored images a month, one month per upload.
    images_storage_micro_usd: int = variable(
        "CLOUDFLARE_IMAGES_STORAGE_USD", Usd(), "0.00005", "what one Cloudflare upload costs"
    )
    allow_private_urls: bool = variable(
        "ALLOW_PRIVATE_URLS", Flag(), "false", "tests only: private addresses and http"
    )
    # Signs the web gallery's links; unset: one is generated once into DATA_DIR/gallery.secret.
    gallery_secret: str | None = variable(
        "GALLERY_SECRET", Text(min_length=32), None, "signs web gallery links", secret=True
    )
    gallery_link_hours: int = variable(
        "GALLERY_LINK_HOURS", Integer(1, 24 * 30), "24", "how long a gallery link works"
    )
    log_level: str = variable(
        "LOG_LEVEL", Choice(("debug", "info", "warning", "error"), upper=True), "INFO", "logs"
    )
    loop_lag_probe: bool = variable(
        "LOOP_LAG_PROBE", Flag(), "false", "log the worst event-loop stall at exit and on SIGUSR1"
    )

    @property
    def syncs_commands(self) -> bool:
        """Whether this process syncs the slash commands: only the one holding shard 0 (or an
        unsharded bot), so N shard processes never race to overwrite them."""
        return self.shard_ids is None or 0 in self.shard_ids


def declared_variables(settings_class: type[Any] = Settings) -> Iterator[Variable]:
    """Every declared variable, nested groups (QuotaDefaults) included, in declaration order."""
    for item in fields(settings_class):
        if "variable" in item.metadata:
            yield item.metadata["variable"]
        elif is_dataclass(item.default):
            yield from declared_variables(type(item.default))


# --------------------------------------------------------------------------- reading


def read_environment(env_file: Path | None = Path(".env")) -> dict[str, str]:
    """The environment with ``.env`` underneath it: a real variable wins over the file."""
    merged: dict[str, str] = {}
    if env_file is not None and env_file.is_file():
        merged.update({k: v for k, v in dotenv_values(env_file).items() if v is not None})
    merged.update(os.environ)
    return merged


def _read_group(group: type[Any], env: Mapping[str, str]) -> dict[str, Any]:
    """The declared fields of ``group`` read from ``env``; a blank value means the default."""
    values: dict[str, Any] = {}
    for item in fields(group):
        declared: Variable | None = item.metadata.get("variable")
        if declared is not None:
            raw = env.get(declared.name, "").strip()
            values[item.name] = declared.kind.parse(declared.name, raw) if raw else item.default
        elif is_dataclass(item.default):
            nested: Any = type(item.default)
            values[item.name] = nested(**_read_group(nested, env))
    return values


def _choose_backends(settings: Settings) -> Settings:
    """Resolve IMAGE_PROVIDER / IMAGE_STORE ('auto' by default) and say why."""
    provider_wanted, store_wanted = str(settings.image_provider), str(settings.image_store)
    has_ai = bool(settings.cloudflare_account_id and settings.cloudflare_api_token)
    has_images = has_ai and bool(settings.cloudflare_image_account_hash)
    provider: Backend = "cloudflare" if provider_wanted == "cloudflare" else "local"
    if provider_wanted == "auto":
        provider = "cloudflare" if has_ai else "local"
    store: Backend = "cloudflare" if store_wanted == "cloudflare" else "local"
    if store_wanted == "auto":
        store = "cloudflare" if has_images else "local"
    credentials = {
        "CLOUDFLARE_ACCOUNT_ID": settings.cloudflare_account_id,
        "CLOUDFLARE_API_TOKEN": settings.cloudflare_api_token,
        "CLOUDFLARE_IMAGE_ACCOUNT_HASH": settings.cloudflare_image_account_hash,
    }
    for name, backend, needed in (
        ("IMAGE_PROVIDER", provider, ("CLOUDFLARE_ACCOUNT_ID", "CLOUDFLARE_API_TOKEN")),
        ("IMAGE_STORE", store, tuple(credentials)),
    ):
        if backend == "cloudflare":
            for variable_name in needed:
                if not credentials[variable_name]:
                    raise ConfigError(variable_name, f"is required when {name} is cloudflare")
    reasons = []
    for label, chosen, wanted in (
        ("provider", provider, provider_wanted),
        ("store", store, store_wanted),
    ):
        if wanted != "auto":
            why = "set explicitly"
        elif chosen == "cloudflare":
            why = "auto: Cloudflare credentials are set"
        elif label == "store" and has_ai:
            why = "auto: CLOUDFLARE_IMAGE_ACCOUNT_HASH is not set"
        else:
            why = "auto: no Cloudflare credentials"
        reasons.append(f"{label}={chosen} ({why})")
    return replace(
        settings, image_provider=provider, image_store=store, backend_reason=", ".join(reasons)
    )



def _check_shards(count: int | None, ids: tuple[int, ...] | None) -> None:
    if ids is not None and count is None:
        raise ConfigError("SHARD_IDS", "needs SHARD_COUNT (the number of shards in all)")
    if ids is not None and count is not None and ids[-1] >= count:
        raise ConfigError("SHARD_IDS", "must be below SHARD_COUNT (shards count from 0)")


def load_settings(env: Mapping[str, str]) -> Settings:
    """Build Settings from raw variables; ConfigError on the first bad one."""
    values = _read_group(Settings, env)
    _check_shards(values["shard_count"], values["shard_ids"])
    if values["database_path"] is None:
        values["database_path"] = values["data_dir"] / "bot.sqlite3"
    if values["public_base_url"] is None:
        url = f"http://{values['web_host']}:{values['web_port']}"
        values["public_base_url"] = Url().parse("PUBLIC_BASE_URL", url)
    return _choose_backends(Settings(**values))
