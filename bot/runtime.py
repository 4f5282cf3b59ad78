"""Builds every part from Settings, once, and closes them in reverse order.

Fronts (the Discord bot, the CLI, the web server) receive a ``Runtime`` and call
``runtime.service``; nothing here reads the environment.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass

import httpx

from bot import imaging
from bot.account_budget import SharedAccountBudget
from bot.api_keys import ApiKeys
from bot.batches import BatchService
from bot.catalog import CONTENT_MODERATION, Catalog, load_catalog
from bot.cloudflare_api import CloudflareAPI
from bot.cloudflare_limits import (
    ACCOUNT_WINDOW_SECONDS,
    IMG2IMG_PER_MINUTE,
    TEXT_TO_IMAGE_PER_MINUTE,
    RunLimits,
)
from bot.config import Settings
from bot.errors import ConfigError, InvalidModel
from bot.gallery import GalleryService
from bot.gallery_links import GalleryLinks, gallery_secret
from bot.http_backend import Client, ShardedTransport
from bot.leases import LeaseKeeper
from bot.ledger import Ledger
from bot.ledger.limits import AI_IMG2IMG, AI_RUN
from bot.metrics import Metrics
from bot.placeholders import PlaceholderService
from bot.providers.base import ImageProvider
from bot.providers.cloudflare import CloudflareProvider
from bot.providers.local import LocalProvider
from bot.recovery import CrashRecovery
from bot.scheduler import JobScheduler
from bot.server_admin import ServerAdmin
from bot.service import ImageService
from bot.stores.base import ImageStore
from bot.stores.cloudflare import CloudflareImagesStore
from bot.stores.local import LocalImageStore
from bot.variants import VariantRenderer

log = logging.getLogger(__name__)

# Every connection may stay open: httpcore closes an idle connection whenever the pool holds
# more than max_keepalive_connections (of any state), so a smaller keep-alive figure reconnects
# on most calls under load. CloudflareAPI never hands httpx more calls than max_connections.
HTTP_LIMITS = httpx.Limits(max_connections=64, max_keepalive_connections=64)


OUTBOUND_TIMEOUT = httpx.Timeout(15.0, connect=5.0)


@dataclass(frozen=True)
class Runtime:
    settings: Settings
    catalog: Catalog
    ledger: Ledger
    provider: ImageProvider
    store: ImageStore
    service: ImageService
    admin: ServerAdmin
    keys: ApiKeys
    batches: BatchService
    placeholders: PlaceholderService
    http: httpx.AsyncClient  # for addresses users give: uploads by URL, webhooks
    variants: VariantRenderer  # image variants for anyone with a URL, on a pool of their own
    gallery: GalleryService
    leases: LeaseKeeper  # this process's lease; closes the jobs of processes that stopped
    metrics: Metrics  # this runtime's own Prometheus registry (GET /metrics)


def catalog_of(settings: Settings) -> Catalog:
    """The catalog with the operator's MODELS_FILE and price for models Cloudflare does not
    price (see bot/catalog.py)."""
    micro = settings.unpublished_model_micro_usd
    return load_catalog(settings.models_file, None if micro is None else micro * 1000)


def check_catalog(settings: Settings, catalog: Catalog) -> None:
    try:
        spec = catalog.get(settings.default_model)
    except InvalidModel:
        raise ConfigError("DEFAULT_MODEL", "is not an enabled model in the catalog") from None
    if not spec.text_to_image:
        raise ConfigError("DEFAULT_MODEL", "must be a text-to-image model")
    if settings.moderation_model is not None:  # never silently unchecked
        try:
            moderator = catalog.get(settings.moderation_model)
        except InvalidModel:
            raise ConfigError(
                "MODERATION_MODEL", "is not an enabled model in the catalog (or set it to off)"
            ) from None
        if CONTENT_MODERATION not in moderator.capabilities:
            raise ConfigError("MODERATION_MODEL", "must be a content-moderation model")


@asynccontextmanager
async def open_runtime(settings: Settings, *, recover: bool = True) -> AsyncIterator[Runtime]:
    catalog = catalog_of(settings)
    check_catalog(settings, catalog)
    metrics = Metrics()
    async with AsyncExitStack() as stack:
        ledger = await Ledger.open(
            settings.database_url or settings.database_path, settings.quotas, metrics=metrics
        )
        stack.push_async_callback(ledger.close)
        api: CloudflareAPI | None = None
        budget: SharedAccountBudget | None = None
        if "cloudflare" in (settings.image_provider, settings.image_store):
            read = float(settings.cloudflare_timeout_seconds)
            timeout = httpx.Timeout(connect=10.0, read=read, write=60.0, pool=30.0)
            http = await stack.enter_async_context(
                Client(timeout=timeout, transport=ShardedTransport(limits=HTTP_LIMITS))
            )
            assert settings.cloudflare_account_id and settings.cloudflare_api_token
            max_total_seconds = max(60.0, read * 2)
            budget = SharedAccountBudget(  # one account budget for every process on the ledger
                ledger.limits,
                settings.cloudflare_account_requests_per_5min,
                ACCOUNT_WINDOW_SECONDS,
                call_seconds=max_total_seconds,
            )
            stack.push_async_callback(budget.close)
            run_budgets = (  # Workers AI's per-minute limits are per account too
                SharedAccountBudget.for_runs(ledger.limits, TEXT_TO_IMAGE_PER_MINUTE, AI_RUN),
                SharedAccountBudget.for_runs(ledger.limits, IMG2IMG_PER_MINUTE, AI_IMG2IMG),
            )
            for run_budget in run_budgets:
                stack.push_async_callback(run_budget.close)
            api = CloudflareAPI(
                http,
                account_id=settings.cloudflare_account_id,
                api_token=settings.cloudflare_api_token,
                base_url=settings.cloudflare_api_base_url,
                max_total_seconds=max_total_seconds,
                account_requests=settings.cloudflare_account_requests_per_5min,
                max_connections=HTTP_LIMITS.max_connections or 64,
                account_budget=budget,
                runs=RunLimits(budgets=run_budgets),
                metrics=metrics,
            )
        provider: ImageProvider = CloudflareProvider(api) if api else LocalProvider()
        store: ImageStore
        upload_micro_usd = 0  # the local store's disk is the operator's own
        if settings.image_store == "cloudflare" and api is not None:
            assert settings.cloudflare_image_account_hash
            store = CloudflareImagesStore(
                api,
                account_hash=settings.cloudflare_image_account_hash,
                delivery_url=settings.cloudflare_image_delivery_url,
                signing_key=settings.cloudflare_images_signing_key,
            )
            upload_micro_usd = settings.images_storage_micro_usd
        else:
            store = LocalImageStore(settings.data_dir / "images", settings.public_base_url)
        outbound = await stack.enter_async_context(
            Client(timeout=OUTBOUND_TIMEOUT, follow_redirects=False)
        )
        service = ImageService(
            ledger=ledger,
            provider=provider,
            store=store,
            catalog=catalog,
            scheduler=JobScheduler(
                max_per_user=settings.max_jobs_per_user,
                max_running=settings.max_concurrent_jobs,
                max_queue=settings.max_queue,
            ),
            default_model=settings.default_model,
            enhance_model=settings.enhance_model,
            moderation_model=settings.moderation_model,
            cache_scope=settings.cache_scope,
            upload_micro_usd=upload_micro_usd,
            http=outbound,
            allow_private_urls=settings.allow_private_urls,
            metrics=metrics,
            # a request waits for another process's identical one as long as a job may take
            flight_wait_seconds=max(60.0, 2.0 * settings.cloudflare_timeout_seconds),
        )
        leases = LeaseKeeper(
            ledger, CrashRecovery(ledger, store), float(settings.job_lease_seconds)
        )
        if budget is not None:
            leases.on_renewal(budget.refresh)
        await leases.start(recover=recover)
        stack.push_async_callback(leases.stop)
        admin = ServerAdmin(ledger, catalog, settings.default_model)
        batches = BatchService(
            service, ledger, outbound, allow_private_urls=settings.allow_private_urls
        )
        stack.push_async_callback(batches.close)
        variants = VariantRenderer(
            workers=settings.variant_workers,
            cache_bytes=settings.variant_cache_mb * 1024 * 1024,
            bounds=imaging.VariantBounds(settings.variant_max_side, settings.variant_max_pixels),
        )
        stack.callback(variants.close)
        placeholders = PlaceholderService(service, ledger, store, variants)
        await placeholders.set_daily_quota(settings.placeholder_daily_images)
        links = GalleryLinks(gallery_secret(settings), settings.gallery_link_hours)
        gallery = GalleryService(ledger, store, links, settings.public_base_url)
        keys = ApiKeys(ledger, settings.api_rate_per_minute)
        yield Runtime(
            settings, catalog, ledger, provider, store, service, admin, keys,
            batches, placeholders, outbound, variants, gallery, leases, metrics,
        )  # fmt: skip
