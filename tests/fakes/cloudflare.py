"""A fake Cloudflare API (Workers AI, Images, image delivery) on a real socket at 127.0.0.1.

The real httpx client talks to it over TCP, so request encoding (JSON vs multipart, paths with
``@`` and slashes, headers) is exercised for real. Each model answers in the shape the reference
describes; faults can be scripted (``inject``) or random (``fault_rate``). Every request is
recorded in ``calls``; for GET requests the recorded body is the query string.

Like Cloudflare, it holds the token to ``account_limit`` API requests per ``account_window``
seconds across every route (1,200 per 5 minutes; tests shrink the window): the request over it
is answered 429 with Retry-After, and so is every call for ``account_block_seconds`` after.
``api_requests`` counts the authenticated API requests, ``account_429s`` those refused so.
``answered`` counts, per prompt, the images Workers AI answered (what the account pays for).
Workers AI's own per-minute limits are held per account too, counted when a run arrives:
``run_limit`` text-to-image runs per ``run_window`` (720 a minute) over every image model but the
img2img one, which has ``img2img_run_limit`` (1,500) of its own; a run over its limit is answered
429 with Retry-After (Cloudflare documents no code for it; the fake uses the API's 971) and
counted in ``run_429s``. Text models are not limited here.

Its Llama Guard (``@cf/meta/llama-guard-3-8b``) answers as Workers AI does, deciding by the
words of the conversation (``GUARD_WORDS``), and records each text in ``guard_checks``;
Cloudflare's own flagged-content refusal is the injectable fault ``3030``.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import hashlib
import hmac
import io
import json
import random
import re
import time
import uuid
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import lru_cache
from typing import Any, NamedTuple

from aiohttp import web
from PIL import Image

# kind → (status, code, message) for faults answered with an error envelope.
_ENVELOPE_FAULTS: dict[str, tuple[int, int, str]] = {
    "429": (429, 971, "Please wait and consider throttling your request speed"),
    "3040": (429, 3040, "Capacity temporarily exceeded, please try again."),
    "3036": (429, 3036, "You have used up your daily free allocation of 10,000 neurons."),
    "3030": (400, 3030, "AiError: Input prompt contains NSFW content."),
    "401": (401, 10000, "Authentication error"),
    "403": (403, 10000, "Authentication error"),
    "5035": (403, 5035, "This model requires the Workers Paid plan"),
    "5016": (403, 5016, "Workers Paid plan required to use this model"),
    "400": (400, 3003, "Bad input: incomplete request"),
    "413": (413, 3006, "Request is too large"),
}

_OTHER_FAULTS = ("500", "timeout", "malformed", "wrong_type_image", "wrong_type_json", "not_image")
FAULT_KINDS = frozenset(_ENVELOPE_FAULTS).union(_OTHER_FAULTS)


@dataclass(frozen=True)
class FakeModel:
    body: str  # 'json' | 'multipart'
    output: str  # 'raw' | 'envelope' | 'text'
    image_format: str = "PNG"  # Pillow format name
    default_size: tuple[int, int] = (1024, 1024)
    fixed_size: bool = False
    allowed: frozenset[str] | None = None  # None: extra fields are ignored


_SD = FakeModel("json", "raw", "PNG")
_FLUX2 = FakeModel("multipart", "envelope", "PNG", default_size=(1024, 768))
MODELS: dict[str, FakeModel] = {
    "@cf/black-forest-labs/flux-1-schnell": FakeModel(
        "json", "envelope", "JPEG", fixed_size=True, allowed=frozenset({"prompt", "steps"})
    ),
    "@cf/stabilityai/stable-diffusion-xl-base-1.0": _SD,
    "@cf/bytedance/stable-diffusion-xl-lightning": _SD,
    "@cf/lykon/dreamshaper-8-lcm": _SD,
    "@cf/runwayml/stable-diffusion-v1-5-img2img": _SD,
    "@cf/runwayml/stable-diffusion-v1-5-inpainting": _SD,
    "@cf/leonardo/phoenix-1.0": FakeModel("json", "raw", "JPEG"),
    "@cf/leonardo/lucid-origin": FakeModel("json", "envelope", "PNG", default_size=(1120, 1120)),
    "@cf/black-forest-labs/flux-2-dev": _FLUX2,
    "@cf/black-forest-labs/flux-2-klein-4b": _FLUX2,
    "@cf/black-forest-labs/flux-2-klein-9b": _FLUX2,
    "@cf/meta/llama-3.1-8b-instruct-fp8-fast": FakeModel("json", "text"),
    "@cf/meta/llama-guard-3-8b": FakeModel("json", "guard"),
}

# How the fake Llama Guard decides, deterministically: a category per word (whole words, any
# case). Its own table, not the bot's offline stand-in, so tests see two independent judges.
GUARD_WORDS: dict[str, str] = {
    "gore": "S1", "murderous": "S1", "heist": "S2", "nude": "S12", "nudity": "S12",
    "erotic": "S12", "hateful": "S10", "genocide": "S10", "self-harm": "S11", "anthrax": "S9",
}  # fmt: skip
GUARD_FIELDS = frozenset({"messages", "max_tokens", "temperature", "response_format"})
GUARD_TEMPLATE_TOKENS = 212  # Llama Guard's own instructions, billed as input


BODY = web.RequestKey("body", object)
FORCE_OUTPUT = web.RequestKey("force_output", str)


class Call(NamedTuple):
    method: str
    path: str
    headers: dict[str, str]  # without Authorization
    content_type: str
    body: Any  # JSON value, multipart dict (files as FilePart), query dict for GET, or bytes


class FilePart(NamedTuple):
    filename: str
    content_type: str
    data: bytes


class FakeImage(NamedTuple):
    data: bytes
    metadata: dict[str, Any]
    require_signed: bool


@dataclass
class Fault:
    kind: str
    path_contains: str
    retry_after: float | None
    retry_after_on_any_status: bool = False


class _BadJSON:
    """Marks a request body that claimed to be JSON but did not parse."""


def sniff(data: bytes) -> str | None:
    if data.startswith(b"\x89PNG"):
        return "image/png"
    if data.startswith(b"\xff\xd8\xff"):
        return "image/jpeg"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    if data[:6] in (b"GIF87a", b"GIF89a"):
        return "image/gif"
    return None


@lru_cache(maxsize=64)
def render(width: int, height: int, rgb: tuple[int, int, int], fmt: str) -> bytes:
    """A solid-colour image, cached per (size, colour, format) so tests stay fast."""
    out = io.BytesIO()
    Image.new("RGB", (width, height), rgb).save(out, format=fmt)
    return out.getvalue()


def colour_of(prompt: str) -> tuple[int, int, int]:
    digest = hashlib.sha256(prompt.encode()).digest()
    return digest[0], digest[1], digest[2]


def envelope_error(status: int, code: int, message: str, **headers: str) -> web.Response:
    body = {"success": False, "errors": [{"code": code, "message": message}], "result": None}
    return web.json_response(body, status=status, headers=headers)


def ok(result: Any) -> web.Response:
    return web.json_response({"success": True, "errors": [], "messages": [], "result": result})


class FakeCloudflare:
    """``async with FakeCloudflare(...) as fake:`` serves ``fake.api_base``/``delivery_base``."""

    def __init__(
        self,
        *,
        api_token: str,
        account_id: str = "acct-test",
        account_hash: str = "hash-test",
        signing_key: str | None = None,
        seed: int = 1234,
    ) -> None:
        self.account_id = account_id
        self.api_token = api_token
        self.account_hash = account_hash
        self.signing_key = signing_key
        self.clock: Callable[[], float] = time.time  # what signed delivery URLs' exp is checked at
        self.latency = 0.0  # added to every /ai/run call
        self.store_latency = 0.0  # added to every /images call
        self.upload_reply_latency = 0.0  # after an upload is stored, before the answer
        self.unanswered_uploads = 0  # stored now, their answer not yet sent (in that pause)
        self.hang_seconds = 30.0  # how long a 'timeout' fault hangs (ends early on close)
        self.fault_rate = 0.0
        self.fault_kinds: tuple[str, ...] = ("500",)
        self.fault_path = "/ai/run"
        self.random = random.Random(seed)
        self.meta_key = "meta"  # Images answers carry metadata under this key
        self.text_usage = True  # include result.usage in text-model answers
        self.guard_checks: list[str] = []  # every text Llama Guard was asked about
        self.calls: list[Call] = []
        self.account_limit = 1200
        self.account_window = 300.0
        self.account_block_seconds = 300.0
        self.api_requests = 0
        self.account_429s = 0
        self._arrivals: deque[float] = deque()
        self.run_limit = 720
        self.img2img_run_limit = 1500
        self.run_window = 60.0
        self.run_429s = 0
        self.most_runs_in_a_window: dict[str, int] = {}  # by limit: the most ever counted at once
        self._runs: dict[str, deque[float]] = {}
        self._blocked_until = 0.0
        self.ai_calls = 0  # every request to /ai/run, faulted ones included
        self.uploads = 0  # every POST to /images/v1, faulted or rejected ones included
        # prompt → images answered for it to a client still listening: what the account pays for
        self.answered: Counter[str] = Counter()
        self.images: dict[str, FakeImage] = {}
        self._uploaded: dict[str, tuple[str, str]] = {}  # id → (filename, uploaded ISO time)
        self._faults: list[Fault] = []
        self._closing = asyncio.Event()
        self._runner: web.AppRunner | None = None
        self.port = 0

    @property
    def api_base(self) -> str:
        return f"http://127.0.0.1:{self.port}/client/v4"

    @property
    def delivery_base(self) -> str:
        return f"http://127.0.0.1:{self.port}/delivery"

    def inject(
        self,
        kind: str,
        times: int = 1,
        path_contains: str = "/ai/run",
        retry_after: float | None = 1.0,
        *,
        retry_after_on_any_status: bool = False,
    ) -> None:
        """Queue ``times`` faults of ``kind`` for the next requests whose path matches.

        A '429' carries ``Retry-After: retry_after`` (none when it is None); other kinds carry
        it only with ``retry_after_on_any_status``."""
        if kind not in FAULT_KINDS:
            raise ValueError(f"unknown fault kind {kind!r}")
        self._faults.extend(
            Fault(kind, path_contains, retry_after, retry_after_on_any_status) for _ in range(times)
        )

    def ai_requests(self) -> list[Call]:
        return [c for c in self.calls if "/ai/run/" in c.path]

    async def __aenter__(self) -> FakeCloudflare:
        app = web.Application(middlewares=[self._middleware], client_max_size=32 * 1024**2)
        acct = "/client/v4/accounts/{acct}"
        app.router.add_post(acct + "/ai/run/{model:.+}", self._run)
        app.router.add_get(acct + "/ai/models/search", self._models_search)
        app.router.add_post(acct + "/images/v1", self._upload)
        app.router.add_get(acct + "/images/v1/stats", self._stats)
        app.router.add_get(acct + "/images/v1/{id}/blob", self._blob)
        app.router.add_get(acct + "/images/v1/{id}", self._image_details)
        app.router.add_delete(acct + "/images/v1/{id}", self._delete)
        app.router.add_get(acct + "/images/v2", self._list)
        app.router.add_get("/delivery/{hash}/{id}/{variant}", self._deliver)
        self._runner = web.AppRunner(app, shutdown_timeout=1.0, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = self._runner.addresses[0][1]
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        self._closing.set()
        if self._runner is not None:
            await self._runner.cleanup()

    async def _pause(self, seconds: float) -> None:
        """Sleep, but end early when the fake shuts down."""
        if seconds > 0:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._closing.wait(), seconds)

    # --- plumbing -------------------------------------------------------------------------

    @web.middleware
    async def _middleware(self, request: web.Request, handler: Any) -> web.StreamResponse:
        body = await self._parse_body(request)
        request[BODY] = body
        headers = {k: v for k, v in request.headers.items() if k.lower() != "authorization"}
        self.calls.append(Call(request.method, request.path, headers, request.content_type, body))
        path = request.path
        if "/ai/run/" in path:
            self.ai_calls += 1
            if refused := self._over_run_limit(path):
                return refused
            await self._pause(self.latency)
        if "/images/" in path:
            await self._pause(self.store_latency)
            if request.method == "POST" and path.endswith("/images/v1"):
                self.uploads += 1
        if not path.startswith("/client/v4/"):
            return await handler(request)
        if request.headers.get("Authorization") != f"Bearer {self.api_token}":
            return envelope_error(401, 10000, "Authentication error")
        if request.match_info.get("acct", self.account_id) != self.account_id:
            return envelope_error(404, 7003, "Could not route to this account")
        if refused := self._over_account_limit():
            return refused
        fault = self._take_fault(path)
        if fault is not None:
            if fault.kind.startswith("wrong_type_"):
                request[FORCE_OUTPUT] = "raw" if fault.kind == "wrong_type_image" else "envelope"
            else:
                return await self._fault_response(fault)
        return await handler(request)

    async def _parse_body(self, request: web.Request) -> Any:
        if request.method == "GET":
            return dict(request.query)
        if request.content_type.startswith("multipart/"):
            form: dict[str, Any] = {}
            for key, value in (await request.post()).items():
                if isinstance(value, web.FileField):
                    form[key] = FilePart(value.filename, value.content_type, value.file.read())
                else:
                    form[key] = value if isinstance(value, str) else bytes(value).decode()
            return form
        raw = await request.read()
        if request.content_type == "application/json":
            try:
                return json.loads(raw)
            except ValueError:
                return _BadJSON()
        return raw

    def _over_account_limit(self) -> web.Response | None:
        """Count one API request; past the limit, 429 for it and for the whole block period."""
        self.api_requests += 1
        now = time.monotonic()
        if now >= self._blocked_until:
            while self._arrivals and self._arrivals[0] <= now - self.account_window:
                self._arrivals.popleft()
            if len(self._arrivals) < self.account_limit:
                self._arrivals.append(now)
                return None
            self._blocked_until = now + self.account_block_seconds
        self.account_429s += 1
        wait = f"{max(self._blocked_until - now, 0.001):.6g}"
        message = "Please wait and consider throttling your request speed"
        return envelope_error(429, 971, message, **{"Retry-After": wait})

    def _over_run_limit(self, path: str) -> web.Response | None:
        """Count one image-model run at its arrival; past its per-minute limit, 429."""
        model_id = path.partition("/ai/run/")[2]
        model = MODELS.get(model_id)
        if model is None or model.output in ("text", "guard"):
            return None
        img2img = model_id == "@cf/runwayml/stable-diffusion-v1-5-img2img"
        name = "img2img" if img2img else "text-to-image"
        limit = self.img2img_run_limit if img2img else self.run_limit
        arrivals = self._runs.setdefault(name, deque())
        now = time.monotonic()
        while arrivals and arrivals[0] <= now - self.run_window:
            arrivals.popleft()
        if len(arrivals) < limit:
            arrivals.append(now)
            most = self.most_runs_in_a_window
            most[name] = max(most.get(name, 0), len(arrivals))
            return None
        self.run_429s += 1
        wait = f"{max(arrivals[0] + self.run_window - now, 0.001):.6g}"
        return envelope_error(429, 971, "Too many requests for this model", **{"Retry-After": wait})

    def _take_fault(self, path: str) -> Fault | None:
        for index, fault in enumerate(self._faults):
            if fault.path_contains in path:
                return self._faults.pop(index)
        if self.fault_rate and self.fault_path in path and self.random.random() < self.fault_rate:
            return Fault(self.random.choice(self.fault_kinds), self.fault_path, 1.0)
        return None

    async def _fault_response(self, fault: Fault) -> web.Response:
        kind = fault.kind
        headers: dict[str, str] = {}
        if fault.retry_after is not None and (kind == "429" or fault.retry_after_on_any_status):
            headers["Retry-After"] = f"{fault.retry_after:g}"
        if kind in _ENVELOPE_FAULTS:
            status, code, message = _ENVELOPE_FAULTS[kind]
            return envelope_error(status, code, message, **headers)
        if kind == "500":
            html = "<html>500 Internal Server Error</html>"
            return web.Response(status=500, text=html, content_type="text/html", headers=headers)
        if kind == "timeout":
            await self._pause(self.hang_seconds)
            return web.Response(status=504, text="gateway timeout")
        if kind == "malformed":
            return web.Response(text='{"result": {"image": "iVBOR', content_type="application/json")
        if kind == "not_image":
            return web.Response(body=b"this is not an image at all", content_type="image/png")
        raise AssertionError(f"unhandled fault {kind}")

    # --- Workers AI -------------------------------------------------------------------------

    async def _run(self, request: web.Request) -> web.Response:
        model_id = request.match_info["model"]
        model = MODELS.get(model_id)
        if model is None:
            return envelope_error(400, 5007, f"No such model {model_id} or task")
        body = request[BODY]
        multipart = request.content_type.startswith("multipart/")
        if model.body == "multipart" and not multipart:
            return envelope_error(400, 3003, "Bad input: this model takes multipart/form-data")
        if model.body == "json" and (multipart or not isinstance(body, dict)):
            return envelope_error(400, 3003, "Bad input: body is not a JSON object")
        if model.output == "text":
            return self._complete(body)
        if model.output == "guard":
            return self._guard(body)
        if model.allowed is not None and (unknown := set(body) - model.allowed):
            return envelope_error(400, 3003, f"Bad input: unknown fields {sorted(unknown)}")
        prompt = body.get("prompt")
        if not isinstance(prompt, str) or not 1 <= len(prompt) <= 2048:
            return envelope_error(400, 3003, "Bad input: prompt must be 1-2048 characters")
        if body.get("negative_prompt") == "":
            return envelope_error(400, 3003, "Bad input: negative_prompt must not be empty")
        problem = self._check_init_image(body)
        if problem:
            return envelope_error(400, 5004, problem)
        try:
            width = int(body.get("width", model.default_size[0]))
            height = int(body.get("height", model.default_size[1]))
        except (TypeError, ValueError):
            return envelope_error(400, 3003, "Bad input: width/height must be integers")
        if model.fixed_size:
            width, height = model.default_size
        if not (64 <= width <= 2560 and 64 <= height <= 2560):
            return envelope_error(400, 3003, "Bad input: width/height out of range")
        data = render(width, height, colour_of(prompt), model.image_format)
        if request.transport is not None and not request.transport.is_closing():
            self.answered[prompt] += 1
        output = request.get(FORCE_OUTPUT, model.output)
        if output == "raw":
            return web.Response(body=data, content_type=f"image/{model.image_format.lower()}")
        return ok({"image": base64.b64encode(data).decode()})

    @staticmethod
    def _check_init_image(body: dict[str, Any]) -> str | None:
        if "image_b64" in body:
            try:
                data = base64.b64decode(body["image_b64"], validate=True)
            except (binascii.Error, ValueError, TypeError):
                return "Invalid base64 in image_b64"
            if sniff(data) is None:
                return "image_b64 is not an image"
        part = body.get("input_image_0")
        if part is not None and (not isinstance(part, FilePart) or sniff(part.data) is None):
            return "input_image_0 must be an image file"
        return None

    def _complete(self, body: dict[str, Any]) -> web.Response:
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            return envelope_error(400, 3003, "Bad input: messages required")
        user = str(messages[-1].get("content", ""))
        text = f"A detailed, vivid rendering of {user}"
        result: dict[str, Any] = {"response": text}
        if self.text_usage:
            result["usage"] = {"prompt_tokens": 21, "completion_tokens": 9, "total_tokens": 30}
        return ok(result)

    def _guard(self, body: dict[str, Any]) -> web.Response:
        """Llama Guard 3 as Workers AI answers it: ``result.response`` is the JSON verdict when
        ``response_format`` asks for ``json_object``, else Llama Guard's text (``safe``, or
        ``unsafe`` and a line of categories); ``result.usage`` counts the tokens billed."""
        if unknown := set(body) - GUARD_FIELDS:
            return envelope_error(400, 3003, f"Bad input: unknown fields {sorted(unknown)}")
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            return envelope_error(400, 3003, "Bad input: messages required")
        for i, message in enumerate(messages):
            role = message.get("role") if isinstance(message, dict) else None
            if role != ("user", "assistant")[i % 2] or not isinstance(message.get("content"), str):
                return envelope_error(400, 3003, "Bad input: roles must alternate user/assistant")
        temperature = body.get("temperature", 0.6)
        if not isinstance(temperature, int | float) or not 0 <= temperature <= 5:
            return envelope_error(400, 3003, "Bad input: temperature must be 0-5")
        fmt = body.get("response_format")
        if fmt is not None and fmt != {"type": "json_object"}:
            return envelope_error(400, 3003, "Bad input: response_format.type must be json_object")
        text = " ".join(m["content"] for m in messages)
        words = re.findall(r"[\w-]+", text.casefold())
        codes = sorted({GUARD_WORDS[w] for w in words if w in GUARD_WORDS},
                       key=lambda c: int(c[1:]))  # fmt: skip
        self.guard_checks.append(text)
        response: Any = {"safe": not codes, "categories": codes}
        if fmt is None:
            response = "unsafe\n" + ",".join(codes) if codes else "safe"
        usage = {"prompt_tokens": GUARD_TEMPLATE_TOKENS + len(words),
                 "completion_tokens": 12 if codes else 6}  # fmt: skip
        usage["total_tokens"] = usage["prompt_tokens"] + usage["completion_tokens"]
        return ok({"response": response, "usage": usage})

    async def _models_search(self, request: web.Request) -> web.Response:
        per_page = int(request.query.get("per_page", "50"))
        names = [{"name": name, "task": {"name": "Text-to-Image"}} for name in MODELS]
        return ok(names[:per_page])

    # --- Images -----------------------------------------------------------------------------

    def _describe(self, image_id: str) -> dict[str, Any]:
        image = self.images[image_id]
        filename, uploaded = self._uploaded[image_id]
        return {
            "id": image_id,
            "filename": filename,
            "uploaded": uploaded,
            "requireSignedURLs": image.require_signed,
            "variants": [f"{self.delivery_base}/{self.account_hash}/{image_id}/public"],
            self.meta_key: image.metadata,
        }

    async def _upload(self, request: web.Request) -> web.Response:
        form = request[BODY]
        if not isinstance(form, dict) or not isinstance(form.get("file"), FilePart):
            return envelope_error(400, 5400, "Expected multipart/form-data with a file")
        file: FilePart = form["file"]
        if sniff(file.data) is None:
            return envelope_error(415, 5415, "Bad request: unsupported image format")
        raw_meta = form.get("metadata", "{}")
        if len(raw_meta.encode()) > 1024:
            return envelope_error(400, 5400, "Bad request: metadata must be at most 1024 bytes")
        try:
            metadata = json.loads(raw_meta)
        except ValueError:
            return envelope_error(400, 5400, "Bad request: metadata is not JSON")
        signed = form.get("requireSignedURLs", "false") == "true"
        image_id = form.get("id")
        if image_id is not None and signed:
            return envelope_error(400, 5400, "Custom ids cannot require signed URLs")
        if image_id in self.images:
            return envelope_error(409, 5409, "Resource already exists")
        image_id = image_id or str(uuid.UUID(int=self.random.getrandbits(128)))
        self.images[image_id] = FakeImage(file.data, metadata, signed)
        self._uploaded[image_id] = (file.filename, datetime.now(UTC).isoformat())
        self.unanswered_uploads += 1
        try:
            await self._pause(self.upload_reply_latency)  # stored, but the client hasn't heard
        finally:
            self.unanswered_uploads -= 1
        return ok(self._describe(image_id))

    def _missing(self, image_id: str) -> web.Response | None:
        if image_id in self.images:
            return None
        return envelope_error(404, 5404, "Image not found")

    async def _image_details(self, request: web.Request) -> web.Response:
        image_id = request.match_info["id"]
        return self._missing(image_id) or ok(self._describe(image_id))

    async def _blob(self, request: web.Request) -> web.Response:
        image_id = request.match_info["id"]
        if missing := self._missing(image_id):
            return missing
        data = self.images[image_id].data
        return web.Response(body=data, content_type=sniff(data) or "application/octet-stream")

    async def _delete(self, request: web.Request) -> web.Response:
        image_id = request.match_info["id"]
        if missing := self._missing(image_id):
            return missing
        del self.images[image_id]
        del self._uploaded[image_id]
        return ok({})

    async def _list(self, request: web.Request) -> web.Response:
        per_page = int(request.query.get("per_page", "1000"))
        start = int(request.query.get("continuation_token") or 0)
        ids = list(self.images)
        if request.query.get("sort_order", "desc") == "desc":
            ids.reverse()
        page = ids[start : start + per_page]
        token = str(start + per_page) if start + per_page < len(ids) else None
        images = [self._describe(i) for i in page]
        return ok({"images": images, "continuation_token": token})

    async def _stats(self, request: web.Request) -> web.Response:
        return ok({"count": {"allowed": 100_000, "current": len(self.images)}})

    # --- Delivery ---------------------------------------------------------------------------

    async def _deliver(self, request: web.Request) -> web.Response:
        image_id = request.match_info["id"]
        image = self.images.get(image_id)
        if request.match_info["hash"] != self.account_hash or image is None:
            return web.Response(status=404, text="not found")
        if image.require_signed and self.signing_key:
            path = request.raw_path.split("?", 1)[0].removeprefix("/delivery")
            exp = request.query.get("exp", "")
            expected = hmac.new(
                self.signing_key.encode(), f"{path}?exp={exp}".encode(), hashlib.sha256
            ).hexdigest()
            valid = hmac.compare_digest(expected, request.query.get("sig", ""))
            if not valid or not exp.isdigit() or int(exp) < self.clock():
                return web.Response(status=403, text="invalid or expired signature")
        return web.Response(body=image.data, content_type=sniff(image.data) or "image/png")
