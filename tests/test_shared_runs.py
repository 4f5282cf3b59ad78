"""Workers AI's per-minute ``ai/run`` limits, shared by every process on one ledger (SQLite and
PostgreSQL): three clients, each with a ledger connection and budgets of its own (as three
processes have), hammer the fake Cloudflare, which holds the per-minute run limits per account
(shrunk here to a second) and answers 429 past them; the img2img model counts against a limit
of its own; a run's grant covers its request's sending, not its answer, and the client cuts off
a request not sent in time."""

from __future__ import annotations

import asyncio
import gc
import socket
import weakref
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import httpx
import pytest

from bot.account_budget import SharedAccountBudget
from bot.cloudflare_api import CloudflareAPI
from bot.cloudflare_limits import IMG2IMG_MODEL, RunLimits
from bot.config import Settings
from bot.errors import ProviderUnavailable
from bot.http_backend import ShardedTransport
from bot.ledger import Ledger
from bot.ledger.limits import ACCOUNT, AI_IMG2IMG, AI_RUN
from bot.requests import GenerateRequest
from bot.runtime import HTTP_LIMITS, open_runtime
from tests.conftest import FAKE_CF_TOKEN
from tests.fakes.cloudflare import FakeCloudflare

pytestmark = pytest.mark.both_ledgers

RUNS, IMG2IMG_RUNS, WINDOW = 12, 30, 1.0
SDXL = "@cf/stabilityai/stable-diffusion-xl-base-1.0"
INPAINTING = "@cf/runwayml/stable-diffusion-v1-5-inpainting"
SEND_SECONDS = 1.0
# The fake stamps a run's arrival when its handler runs, in the test's own event loop: on a busy
# machine that is late by the loop's lag, as network delay is for Cloudflare; the margin covers it.
MARGIN = 1.0


def run_budget(ledger: Ledger, limit: int, name: str) -> SharedAccountBudget:
    return SharedAccountBudget(ledger.limits, limit, WINDOW, block=4, use_seconds=0.2,
                               call_seconds=SEND_SECONDS, margin=MARGIN, name=name)  # fmt: skip


class Client:
    """One 'process': its own ledger connection, run budgets and Cloudflare client."""

    def __init__(self, ledger: Ledger, http: httpx.AsyncClient, base_url: str) -> None:
        self.ledger = ledger
        self.budgets = (
            run_budget(ledger, RUNS, AI_RUN),
            run_budget(ledger, IMG2IMG_RUNS, AI_IMG2IMG),
        )
        self.api = CloudflareAPI(
            http, account_id="acct-test", api_token=FAKE_CF_TOKEN, base_url=base_url,
            runs=RunLimits(RUNS, IMG2IMG_RUNS, window=WINDOW, budgets=self.budgets),
            max_total_seconds=3600.0, backoff_base=0.05,
        )  # fmt: skip

    async def run(self, model: str, **options: object) -> int:
        body = {"prompt": "a lighthouse", "width": 64, "height": 64}
        response = await self.api.request(
            "POST", f"/ai/run/{model}", json=body, rate_limited=True, **options  # type: ignore[arg-type]
        )
        return response.status_code

    async def close(self) -> None:
        for budget in self.budgets:
            await budget.close()
        await self.ledger.close()


Clients = tuple[FakeCloudflare, list[Client]]


@pytest.fixture
async def clients(ledger_location: Path | str) -> AsyncIterator[Clients]:
    async with (
        FakeCloudflare(api_token=FAKE_CF_TOKEN) as fake,
        httpx.AsyncClient(transport=ShardedTransport(limits=HTTP_LIMITS)) as http,  # the bot's
    ):
        fake.run_limit, fake.img2img_run_limit, fake.run_window = RUNS, IMG2IMG_RUNS, WINDOW
        ledgers = [await Ledger.open(ledger_location, instance_id=f"p{n}") for n in range(3)]
        made = [Client(ledger, http, fake.api_base) for ledger in ledgers]
        try:
            yield fake, made
        finally:
            for client in made:
                await client.close()


async def granted(ledger: Ledger) -> dict[str, int]:
    rows = await ledger.database.all(
        "SELECT budget, SUM(slots) FROM cloudflare_grants GROUP BY budget"
    )
    return {str(budget): int(slots) for budget, slots in rows}


async def test_three_processes_never_take_ai_run_over_its_per_minute_limit(
    clients: Clients,
) -> None:
    fake, made = clients
    text_runs = [made[n % 3].run(SDXL if n % 2 else INPAINTING) for n in range(36)]
    img2img_runs = [made[n % 3].run(IMG2IMG_MODEL) for n in range(45)]
    assert await asyncio.gather(*text_runs, *img2img_runs) == [200] * 81  # three windows' worth
    assert fake.run_429s == 0  # the fake refuses the 13th text-to-image run in any second
    assert fake.ai_calls >= 81  # more only if a run was cut off at its send bound (retried)
    assert all(budget.blocks_taken >= 1 for client in made for budget in client.budgets)
    slots = await granted(made[0].ledger)
    # the books: every run had a slot of its own limit's budget, none of the other's; a grant
    # is one write per block, not per run
    assert set(slots) == {AI_RUN, AI_IMG2IMG}
    assert slots[AI_RUN] >= 36 and slots[AI_IMG2IMG] >= 45
    assert sum(b.blocks_taken for c in made for b in c.budgets) <= sum(slots.values()) / 2
    assert await made[1].ledger.audit() == {"counter_mismatches": 0, "open_jobs": 0}


async def test_one_budget_does_not_spend_another(ledger_location: Path | str) -> None:
    ledger = await Ledger.open(ledger_location)
    try:
        limits, now = ledger.limits, ledger.limits.now_ms()
        assert await limits.grant(16, 16, 10_000, now, AI_RUN) == 16
        refused = await limits.grant(16, 16, 10_000, now, AI_RUN)
        assert not isinstance(refused, int) and refused.next_expiry_ms == now + 10_000
        assert await limits.grant(16, 16, 10_000, now, ACCOUNT) == 16  # its own 16 still there
        assert await limits.grant(16, 16, 10_000, now, AI_IMG2IMG) == 16
        assert [await limits.live_slots(now, b) for b in (ACCOUNT, AI_RUN, AI_IMG2IMG)] == [16] * 3
    finally:
        await ledger.close()


async def test_a_run_slower_to_answer_than_its_send_bound_is_not_cut_off(
    clients: Clients,
) -> None:
    """The grant counts until its runs' requests arrived, not until they were answered: a
    generation may take longer than the send bound (as real ones do)."""
    fake, (client, *_) = clients
    fake.latency = SEND_SECONDS * 3  # after the request arrived
    assert await client.run(SDXL, attempts=1) == 200


async def test_a_kept_response_does_not_keep_its_finished_task_alive(clients: Clients) -> None:
    """A run's send bound holds its timeout (and so its task) only weakly: a job whose result
    keeps the response must be freed when it ends, not left for a full garbage collection with
    everything it made (the burst's peak memory)."""
    _, (client, *_) = clients

    class Made:
        def __init__(self, response: httpx.Response) -> None:
            self.response = response

    async def job() -> Made:
        body = {"prompt": "a lighthouse", "width": 64, "height": 64}
        return Made(await client.api.request("POST", f"/ai/run/{SDXL}", json=body,
                                             rate_limited=True))  # fmt: skip

    gc.disable()  # only reference counting may free it
    try:
        task = asyncio.create_task(job())
        made = await task
        assert made.response.status_code == 200
        finished = weakref.ref(task)
        del task
        await asyncio.sleep(0)  # the loop lets go of the task's last callback
        assert finished() is None
    finally:
        gc.enable()


async def test_a_run_not_sent_within_its_send_bound_is_cut_off(ledger_location: Path | str) -> None:
    """A server that never reads: the request cannot be written, so it could arrive after its
    grant stopped counting it; the client gives it up at the send bound."""
    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # inherited by the accepted
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    port = listener.getsockname()[1]
    accepted: list[socket.socket] = []

    async def accept() -> None:
        loop = asyncio.get_running_loop()
        listener.setblocking(False)
        while True:
            connection, _ = await loop.sock_accept(listener)
            accepted.append(connection)  # and never read from

    acceptor = asyncio.create_task(accept())
    ledger = await Ledger.open(ledger_location)
    try:
        async with httpx.AsyncClient(  # the runtime's write timeout and transport
            timeout=60.0, transport=ShardedTransport(limits=HTTP_LIMITS)
        ) as http:
            client = Client(ledger, http, f"http://127.0.0.1:{port}/client/v4")
            huge = {"prompt": "x", "image_b64": "A" * (24 * 1024 * 1024)}  # more than buffers
            async with asyncio.timeout(30):  # the call's own budget is an hour
                with pytest.raises(ProviderUnavailable):
                    await client.api.request(
                        "POST", f"/ai/run/{IMG2IMG_MODEL}", json=huge, rate_limited=True,
                        attempts=1,
                    )  # fmt: skip
            for budget in client.budgets:
                await budget.close()
    finally:
        acceptor.cancel()
        for connection in accepted:
            connection.close()
        listener.close()
        await ledger.close()


def test_img2img_runs_count_against_their_own_limit() -> None:
    runs = RunLimits()
    assert runs.for_path(f"/ai/run/{IMG2IMG_MODEL}") is runs.img2img
    assert runs.img2img.limit == 1500 and runs.text_to_image.limit == 720
    for model in (SDXL, INPAINTING, "@cf/black-forest-labs/flux-2-dev"):
        assert runs.for_path(f"/ai/run/{model}") is runs.text_to_image


async def test_the_runtime_takes_run_grants_on_cloudflare(
    make_settings: Callable[..., Settings], cloudflare_env: dict[str, str]
) -> None:
    async with open_runtime(make_settings(**cloudflare_env)) as runtime:
        request = GenerateRequest(prompt="a lighthouse at dusk", user_id="u1", fresh=True)
        assert (await runtime.service.generate(request)).images
        slots = await granted(runtime.ledger)
        assert slots.keys() == {ACCOUNT, AI_RUN}  # no img2img run, so no grant of its budget
