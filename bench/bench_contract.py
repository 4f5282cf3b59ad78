"""HTTP contract benchmarks: what parsing a body and building a reply through the pydantic
models costs on the event loop (the models are the one definition the OpenAPI document is made
from, so they do this work on every request).

Run: .venv/bin/python bench/bench_contract.py
Figures are medians over 5 rounds of many calls on this machine, in microseconds.
"""

from __future__ import annotations

import json
import statistics
import time
from collections.abc import Callable
from typing import Any

from bot.ledger.records import ImageRecord
from bot.public import ImagePage, image_to_public, public_image
from bot.web.bodies import GenerateBody, parse_body
from bot.web.http import json_response

IMAGE = ImageRecord(
    id="img_0123456789abcdef", kind="generated", job_id="job_1", user_id="42", guild_id="",
    prompt="a lighthouse at dusk", prompt_used="a lighthouse at dusk", negative_prompt=None,
    model="@cf/black-forest-labs/flux-1-schnell", width=1024, height=1024, steps=4, seed=7,
    guidance=None, strength=None, source_image_id=None, store="local",
    storage_key="img_0123456789abcdef", url="http://127.0.0.1:8787/images/img_0/public",
    content_type="image/png", bytes=123_456, cost_micro_usd=634, cost_milli_neurons=57_600,
    cache_key=None, cache_scope=None, metadata={"ref": "a-42", "batch_no": 7},
    created_at="2026-01-31T12:00:00+00:00",
)  # fmt: skip
BODY: dict[str, Any] = {
    "prompt": "a lighthouse at dusk", "width": 512, "height": 512, "seed": 7,
    "metadata": {"ref": "a-42", "batch_no": 7, "nested": {"ok": True}},
}  # fmt: skip


def per_call_us(fn: Callable[[], object], calls: int, rounds: int = 5) -> float:
    results = []
    for _ in range(rounds):
        start = time.perf_counter()
        for _ in range(calls):
            fn()
        results.append((time.perf_counter() - start) / calls * 1e6)
    return statistics.median(results)


def page_of_100() -> object:
    page = ImagePage(images=[public_image(IMAGE) for _ in range(100)], next=IMAGE.created_at)
    return json_response(page.to_json())


def main() -> None:
    figures = {
        "parse a generate body (µs)": per_call_us(lambda: parse_body(GenerateBody, BODY), 20_000),
        "one image reply as JSON values (µs)": per_call_us(lambda: image_to_public(IMAGE), 20_000),
        "GET /api/images page of 100, built and encoded (µs)": per_call_us(page_of_100, 200),
    }
    print(json.dumps({k: round(v, 1) for k, v in figures.items()}, indent=2))


if __name__ == "__main__":
    main()
