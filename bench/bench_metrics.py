"""What the metrics cost: one timed ledger statement's overhead, and one scrape.

Run from the repository root: ``.venv/bin/python bench/bench_metrics.py``.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bot.metrics import Metrics


def main() -> None:
    metrics = Metrics()
    histogram = metrics.ledger_seconds.labels("write")
    count = 200_000
    started = time.perf_counter()
    for _ in range(count):
        begun = time.perf_counter()
        histogram.observe(time.perf_counter() - begun)
    per_statement = (time.perf_counter() - started) / count * 1e6
    for status in range(200, 230):  # a busy process: 30 status labels
        metrics.cloudflare_responses.labels("generation", str(status)).inc()
    scrapes = 1000
    started = time.perf_counter()
    for _ in range(scrapes):
        text = metrics.exposition()
    per_scrape = (time.perf_counter() - started) / scrapes * 1000
    print(f"timing one ledger statement: {per_statement:.2f} us")
    print(f"one scrape: {per_scrape:.2f} ms, {len(text)} bytes")


if __name__ == "__main__":
    main()
