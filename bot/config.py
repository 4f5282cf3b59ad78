"""Settings: read once from the environment (and a ``.env`` file) in ``main()``, never at import.

Every variable is listed in ``.env.example`` and the README. A bad value raises ConfigError,
which names the variable and what is wrong, never the value (it may be a secret).
"""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from dotenv import dotenv_values

from bot.errors import ConfigError
from bot.money import usd_to_micro

Backend = Literal["cloudflare", "local"]
CacheScope = Literal["guild", "global", "off"]

DEFAULT_API_BASE = "https://api.cloudflare.com/client/v4"
DEFAULT_DELIVERY_URL = "https://imagedelivery.net"
DEFAULT_MODEL = "@cf/black-forest-labs/flux-1-schnell"
DEFAULT_ENHANCE_MODEL = "@cf/meta/llama-3.1-8b-instruct-fp8-fast"
MEGABYTE = 1024 * 1024
# Cloudflare Images bills $5 per 100,000 stored images a month: one month is charged per upload.
DEFAULT_IMAGES_STORAGE_MICRO_USD = 50
SECRET_VARIABLES = (
    "DISCORD_TOKEN", "CLOUDFLARE_API_TOKEN", "CLOUDFLARE_IMAGES_SIGNING_KEY", "GALLERY_SECRET",
)


@dataclass(frozen=True)
class QuotaDefaults:
    user_daily_images: int = 25
    user_daily_micro_usd: int = 50_000
    guild_daily_micro_usd: int = 1_000_000
    daily_milli_neurons: int = 10_000_000
    user_daily_uploads: int = 50
    user_daily_upload_bytes: int = 200 * MEGABYTE


@dataclass(frozen=True)
class Settings:
    data_dir: Path
    database_path: Path
    discord_token: str | None = field(default=None, repr=False)
    discord_guild_id: int | None = None
    # Where the commands are offered besides servers that installed the bot: both spend the
    # operator's Cloudflare money, so both are off unless turned on.
    discord_allow_dms: bool = False
    discord_allow_user_install: bool = False
    admin_ids: frozenset[int] = frozenset()
    cloudflare_account_id: str | None = None
    cloudflare_api_token: str | None = field(default=None, repr=False)
    cloudflare_image_account_hash: str | None = None
    cloudflare_images_signing_key: str | None = field(default=None, repr=False)
    cloudflare_api_base_url: str = DEFAULT_API_BASE
    cloudflare_image_delivery_url: str = DEFAULT_DELIVERY_URL
    cloudflare_timeout_seconds: int = 120
    cloudflare_account_requests_per_5min: int = 1000
    image_provider: Backend = "local"
    image_store: Backend = "local"
    backend_reason: str = ""
    web_host: str = "127.0.0.1"
    web_port: int = 8787
    public_base_url: str = "http://127.0.0.1:8787"
    default_model: str = DEFAULT_MODEL
    enhance_model: str = DEFAULT_ENHANCE_MODEL
    models_file: Path | None = None
    unpublished_model_micro_usd: int | None = 2_000  # None: such models hidden until priced
    quotas: QuotaDefaults = QuotaDefaults()
    cache_scope: CacheScope = "guild"
    max_jobs_per_user: int = 2
    max_queue: int = 100
    max_concurrent_jobs: int = 8
    discord_channel_messages_per_10s: int = 40
    api_rate_per_minute: int = 60
    placeholder_daily_images: int = 50
    image_rate_per_minute: int = 600
    web_trusted_proxies: frozenset[str] = frozenset()
    variant_max_side: int = 4096
    variant_max_pixels: int = 4096 * 4096
    variant_workers: int = 2
    variant_cache_mb: int = 64
    web_header_timeout_seconds: int = 10
    web_body_timeout_seconds: int = 60
    web_keepalive_seconds: int = 15
    web_max_request_mb: int = 11
    images_storage_micro_usd: int = DEFAULT_IMAGES_STORAGE_MICRO_USD  # per upload, on Cloudflare
    allow_private_urls: bool = False
    # Signs the web gallery's links; None: one is generated once into DATA_DIR/gallery.secret.
    gallery_secret: str | None = field(default=None, repr=False)
    gallery_link_hours: int = 24
    log_level: str = "INFO"


def read_environment(env_file: Path | None = Path(".env")) -> dict[str, str]:
    """The environment with ``.env`` underneath it: a real variable wins over the file."""
    merged: dict[str, str] = {}
    if env_file is not None and env_file.is_file():
        merged.update({k: v for k, v in dotenv_values(env_file).items() if v is not None})
    merged.update(os.environ)
    return merged


class _Reader:
    """Typed access to the raw variables; every failure names the variable."""

    def __init__(self, env: Mapping[str, str]) -> None:
        self.env = env

    def text(self, name: str, default: str | None = None) -> str | None:
        value = self.env.get(name, "").strip()
        return value or default

    def integer(
        self, name: str, default: int, *, minimum: int = 0, maximum: int | None = None
    ) -> int:
        raw = self.text(name)
        if raw is None:
            return default
        try:
            value = int(raw)
        except ValueError:
            raise ConfigError(name, "must be a whole number") from None
        if value < minimum or (maximum is not None and value > maximum):
            upper = f" and at most {maximum}" if maximum is not None else ""
            raise ConfigError(name, f"must be at least {minimum}{upper}")
        return value

    def usd(self, name: str, default_micro: int) -> int:
        raw = self.text(name)
        if raw is None:
            return default_micro
        try:
            return usd_to_micro(raw)
        except ValueError:
            raise ConfigError(
                name, "must be an amount in US dollars such as 0.05, at most 6 decimal places"
            ) from None

    def flag(self, name: str) -> bool:
        """``true`` or ``false`` (default false)."""
        return self.choice(name, "false", ("true", "false")) == "true"
    def usd_or_off(self, name: str, default_micro: int) -> int | None:
        """An amount in US dollars, or None for 'off'."""
        if (self.text(name) or "").lower() == "off":
            return None
        return self.usd(name, default_micro)

    def choice(self, name: str, default: str, allowed: tuple[str, ...]) -> str:
        value = (self.text(name) or default).lower()
        if value not in allowed:
            raise ConfigError(name, f"must be one of {', '.join(allowed)}")
        return value

    def snowflake(self, name: str) -> int | None:
        raw = self.text(name)
        if raw is None:
            return None
        if not raw.isdigit():
            raise ConfigError(name, "must be a Discord id (digits only)")
        return int(raw)

    def snowflakes(self, name: str) -> frozenset[int]:
        raw = self.text(name)
        if raw is None:
            return frozenset()
        parts = [p.strip() for p in raw.split(",") if p.strip()]
        if not all(p.isdigit() for p in parts):
            raise ConfigError(name, "must be Discord ids (digits) separated by commas")
        return frozenset(int(p) for p in parts)

    def addresses(self, name: str) -> frozenset[str]:
        raw = self.text(name)
        if raw is None:
            return frozenset()
        try:
            return frozenset(
                str(ipaddress.ip_address(p.strip())) for p in raw.split(",") if p.strip()
            )
        except ValueError:
            raise ConfigError(name, "must be IP addresses separated by commas") from None

    def url(self, name: str, default: str) -> str:
        value = self.text(name, default) or default
        if not value.startswith(("http://", "https://")):
            raise ConfigError(name, "must start with http:// or https://")
        return value.rstrip("/")


def _choose_backends(read: _Reader) -> tuple[Backend, Backend, str]:
    """Resolve IMAGE_PROVIDER / IMAGE_STORE ('auto' by default) and say why."""
    provider_wanted = read.choice("IMAGE_PROVIDER", "auto", ("auto", "cloudflare", "local"))
    store_wanted = read.choice("IMAGE_STORE", "auto", ("auto", "cloudflare", "local"))
    has_ai = bool(read.text("CLOUDFLARE_ACCOUNT_ID") and read.text("CLOUDFLARE_API_TOKEN"))
    has_images = has_ai and bool(read.text("CLOUDFLARE_IMAGE_ACCOUNT_HASH"))
    provider: Backend = "cloudflare" if provider_wanted == "cloudflare" else "local"
    if provider_wanted == "auto":
        provider = "cloudflare" if has_ai else "local"
    store: Backend = "cloudflare" if store_wanted == "cloudflare" else "local"
    if store_wanted == "auto":
        store = "cloudflare" if has_images else "local"
    for name, backend, needed in (
        ("IMAGE_PROVIDER", provider, ("CLOUDFLARE_ACCOUNT_ID", "CLOUDFLARE_API_TOKEN")),
        (
            "IMAGE_STORE",
            store,
            ("CLOUDFLARE_ACCOUNT_ID", "CLOUDFLARE_API_TOKEN", "CLOUDFLARE_IMAGE_ACCOUNT_HASH"),
        ),
    ):
        if backend == "cloudflare":
            for variable in needed:
                if not read.text(variable):
                    raise ConfigError(variable, f"is required when {name} is cloudflare")
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
    return provider, store, ", ".join(reasons)


def _gallery_secret(read: _Reader) -> str | None:
    secret = read.text("GALLERY_SECRET")
    if secret is not None and len(secret) < 32:
        raise ConfigError("GALLERY_SECRET", "must be at least 32 characters (or left empty)")
    return secret


def load_settings(env: Mapping[str, str]) -> Settings:
    """Build Settings from raw variables; ConfigError on the first bad one."""
    read = _Reader(env)
    data_dir = Path(read.text("DATA_DIR", "./data") or "./data")
    database = read.text("DATABASE_PATH")
    provider, store, reason = _choose_backends(read)
    host = read.text("WEB_HOST", "127.0.0.1") or "127.0.0.1"
    port = read.integer("WEB_PORT", 8787, minimum=0, maximum=65535)
    models_file = read.text("MODELS_FILE")
    return Settings(
        data_dir=data_dir,
        database_path=Path(database) if database else data_dir / "bot.sqlite3",
        discord_token=read.text("DISCORD_TOKEN"),
        discord_guild_id=read.snowflake("DISCORD_GUILD_ID"),
        discord_allow_dms=read.flag("DISCORD_ALLOW_DMS"),
        discord_allow_user_install=read.flag("DISCORD_ALLOW_USER_INSTALL"),
        admin_ids=read.snowflakes("BOT_ADMIN_IDS"),
        cloudflare_account_id=read.text("CLOUDFLARE_ACCOUNT_ID"),
        cloudflare_api_token=read.text("CLOUDFLARE_API_TOKEN"),
        cloudflare_image_account_hash=read.text("CLOUDFLARE_IMAGE_ACCOUNT_HASH"),
        cloudflare_images_signing_key=read.text("CLOUDFLARE_IMAGES_SIGNING_KEY"),
        cloudflare_api_base_url=read.url("CLOUDFLARE_API_BASE_URL", DEFAULT_API_BASE),
        cloudflare_image_delivery_url=read.url(
            "CLOUDFLARE_IMAGE_DELIVERY_URL", DEFAULT_DELIVERY_URL
        ),
        cloudflare_timeout_seconds=read.integer(
            "CLOUDFLARE_TIMEOUT_SECONDS", 120, minimum=1, maximum=600
        ),
        cloudflare_account_requests_per_5min=read.integer(
            "CLOUDFLARE_ACCOUNT_REQUESTS_PER_5MIN", 1000, minimum=1, maximum=100_000
        ),
        image_provider=provider,
        image_store=store,
        backend_reason=reason,
        web_host=host,
        web_port=port,
        public_base_url=read.url("PUBLIC_BASE_URL", f"http://{host}:{port}"),
        default_model=read.text("DEFAULT_MODEL", DEFAULT_MODEL) or DEFAULT_MODEL,
        enhance_model=read.text("ENHANCE_MODEL", DEFAULT_ENHANCE_MODEL) or DEFAULT_ENHANCE_MODEL,
        models_file=Path(models_file) if models_file else None,
        unpublished_model_micro_usd=read.usd_or_off("UNPUBLISHED_MODEL_PRICE_USD", 2_000),
        quotas=QuotaDefaults(
            user_daily_images=read.integer("QUOTA_USER_DAILY_IMAGES", 25),
            user_daily_micro_usd=read.usd("QUOTA_USER_DAILY_USD", 50_000),
            guild_daily_micro_usd=read.usd("QUOTA_GUILD_DAILY_USD", 1_000_000),
            daily_milli_neurons=read.integer("QUOTA_DAILY_NEURONS", 10_000) * 1000,
            user_daily_uploads=read.integer("QUOTA_USER_DAILY_UPLOADS", 50),
            user_daily_upload_bytes=read.integer(
                "QUOTA_USER_DAILY_UPLOAD_MB", 200, maximum=2**40
            ) * MEGABYTE,
        ),
        cache_scope=read.choice("CACHE_SCOPE", "guild", ("guild", "global", "off")),  # type: ignore[arg-type]
        max_jobs_per_user=read.integer("MAX_JOBS_PER_USER", 2, minimum=1, maximum=64),
        max_queue=read.integer("MAX_QUEUE", 100, minimum=1, maximum=100_000),
        max_concurrent_jobs=read.integer("MAX_CONCURRENT_JOBS", 8, minimum=1, maximum=1024),
        discord_channel_messages_per_10s=read.integer(
            "DISCORD_CHANNEL_MESSAGES_PER_10S", 40, minimum=0, maximum=10_000
        ),
        api_rate_per_minute=read.integer("API_RATE_PER_MINUTE", 60, minimum=1, maximum=100_000),
        placeholder_daily_images=read.integer("PLACEHOLDER_DAILY_IMAGES", 50),
        image_rate_per_minute=read.integer(
            "IMAGE_RATE_PER_MINUTE", 600, minimum=1, maximum=1_000_000
        ),
        web_trusted_proxies=read.addresses("WEB_TRUSTED_PROXIES"),
        variant_max_side=read.integer("VARIANT_MAX_SIDE", 4096, minimum=16, maximum=12_000),
        variant_max_pixels=read.integer(
            "VARIANT_MAX_PIXELS", 4096 * 4096, minimum=256, maximum=100_000_000
        ),
        variant_workers=read.integer("VARIANT_WORKERS", 2, minimum=1, maximum=64),
        variant_cache_mb=read.integer("VARIANT_CACHE_MB", 64, minimum=0, maximum=16_384),
        web_header_timeout_seconds=read.integer(
            "WEB_HEADER_TIMEOUT_SECONDS", 10, minimum=1, maximum=600
        ),
        web_body_timeout_seconds=read.integer(
            "WEB_BODY_TIMEOUT_SECONDS", 60, minimum=1, maximum=3600
        ),
        web_keepalive_seconds=read.integer("WEB_KEEPALIVE_SECONDS", 15, minimum=1, maximum=3600),
        web_max_request_mb=read.integer("WEB_MAX_REQUEST_MB", 11, minimum=1, maximum=1024),
        images_storage_micro_usd=read.usd(
            "CLOUDFLARE_IMAGES_STORAGE_USD", DEFAULT_IMAGES_STORAGE_MICRO_USD
        ),
        allow_private_urls=read.flag("ALLOW_PRIVATE_URLS"),
        gallery_secret=_gallery_secret(read),
        gallery_link_hours=read.integer("GALLERY_LINK_HOURS", 24, minimum=1, maximum=24 * 30),
        log_level=read.choice("LOG_LEVEL", "info", ("debug", "info", "warning", "error")).upper(),
    )
