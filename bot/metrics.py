"""The Prometheus metrics of one runtime, defined once, on a registry of their own.

Each runtime (a bot process, a ``serve`` process, a test) has its own ``CollectorRegistry``, so
many runtimes in one interpreter never share or collide. The seams record into it: the
backends (provider and store latency), ``CloudflareAPI`` (answers by status, limiter waits),
the ledger's ``Database`` (statement latency), the service (deliveries by route) and the
Discord client's HTTP trace (429s). Gauges that are cheap to read (the scheduler's queue) are
read at scrape time; jobs by state come from the ledger, refreshed just before each scrape.
Nothing here names a user, a server or a secret: labels are fixed words and status codes.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import aiohttp
from prometheus_client import (
    CONTENT_TYPE_PLAIN_0_0_4,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

__all__ = ["CONTENT_TYPE", "Metrics"]

# The text format every Prometheus reads (what prometheus-client's own server answers with).
CONTENT_TYPE = CONTENT_TYPE_PLAIN_0_0_4

JOB_STATES = ("reserved", "generating", "storing", "settled", "refunded")
LATENCY_BUCKETS = (0.005, 0.025, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)
LEDGER_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0, 5.0)
WAIT_BUCKETS = (0.001, 0.01, 0.1, 1.0, 5.0, 30.0, 120.0, 300.0)


class Metrics:
    """Every metric the bot exports (names start with ``imagebot_``)."""

    def __init__(self) -> None:
        self.registry = registry = CollectorRegistry(auto_describe=True)
        self.jobs = Gauge(
            "imagebot_jobs", "Jobs in the ledger (all processes) by state: open ones of any "
            "day, settled and refunded ones of the current UTC day",
            ["state"], registry=registry,
        )  # fmt: skip
        self.queue = Gauge(
            "imagebot_scheduler_jobs", "Jobs in this process's scheduler: waiting or running",
            ["status"], registry=registry,
        )  # fmt: skip
        self.backend_seconds = Histogram(
            "imagebot_backend_seconds", "Provider and store calls, by operation and outcome",
            ["backend", "operation", "outcome"], buckets=LATENCY_BUCKETS, registry=registry,
        )  # fmt: skip
        self.cloudflare_responses = Counter(
            "imagebot_cloudflare_responses", "Cloudflare API attempts by kind and HTTP status "
            "('timeout' or 'connection' when no answer came)",
            ["kind", "status"], registry=registry,
        )  # fmt: skip
        self.limiter_wait_seconds = Histogram(
            "imagebot_cloudflare_limiter_wait_seconds", "Time a Cloudflare call waited for the "
            "account-wide (and ai/run) rate limiters before it was sent",
            ["kind"], buckets=WAIT_BUCKETS, registry=registry,
        )  # fmt: skip
        self.ledger_seconds = Histogram(
            "imagebot_ledger_statement_seconds", "Ledger statements, reads and writes",
            ["kind"], buckets=LEDGER_BUCKETS, registry=registry,
        )  # fmt: skip
        self.discord_rate_limited = Counter(
            "imagebot_discord_rate_limited", "429 answers from Discord's REST API, by scope "
            "(X-RateLimit-Scope: user, shared or global)",
            ["scope"], registry=registry,
        )  # fmt: skip
        self.deliveries = Counter(
            "imagebot_deliveries", "Results by how they reached their user: interaction, "
            "channel, dm, undelivered (refunded), api or cli",
            ["route"], registry=registry,
        )  # fmt: skip
        self.flight_joins = Counter(
            "imagebot_flight_joins", "Requests that waited for an identical generation running "
            "in another process, by how the wait ended: image (served from it, free), failed "
            "(it ended without the image), taken_over (its process died) or timeout",
            ["outcome"], registry=registry,
        )  # fmt: skip
        self.flight_waiters = Gauge(
            "imagebot_flight_waiters", "Requests of this process waiting now for an identical "
            "generation running in another process", registry=registry,
        )  # fmt: skip
        for state in JOB_STATES:
            self.jobs.labels(state).set(0)

    # -- recording ---------------------------------------------------------------------------

    @contextmanager
    def timed(self, backend: str, operation: str) -> Iterator[None]:
        """Time one provider or store call; its outcome is ``ok`` or ``error``."""
        started = time.perf_counter()
        outcome = "error"
        try:
            yield
            outcome = "ok"
        finally:
            elapsed = time.perf_counter() - started
            self.backend_seconds.labels(backend, operation, outcome).observe(elapsed)

    def watch_queue(self, waiting: Callable[[], int], running: Callable[[], int]) -> None:
        """Read the scheduler's queue at scrape time (nothing to update per job)."""
        self.queue.labels("waiting").set_function(waiting)
        self.queue.labels("running").set_function(running)

    def set_jobs(self, counts: Mapping[str, int]) -> None:
        for state in JOB_STATES:
            self.jobs.labels(state).set(counts.get(state, 0))

    def discord_trace(self) -> aiohttp.TraceConfig:
        """An aiohttp trace for discord.py's ``http_trace`` option: counts every 429 its HTTP
        client receives (discord.py retries them itself and only logs them)."""
        trace = aiohttp.TraceConfig()

        async def on_request_end(
            session: aiohttp.ClientSession, context: Any, params: aiohttp.TraceRequestEndParams
        ) -> None:
            if params.response.status == 429:
                scope = params.response.headers.get("X-RateLimit-Scope", "unknown")
                if scope not in ("user", "shared", "global"):
                    scope = "unknown"
                self.discord_rate_limited.labels(scope).inc()

        trace.on_request_end.append(on_request_end)
        return trace

    # -- exporting ---------------------------------------------------------------------------

    def exposition(self) -> bytes:
        """The registry in Prometheus' text format (``CONTENT_TYPE``)."""
        return generate_latest(self.registry)
