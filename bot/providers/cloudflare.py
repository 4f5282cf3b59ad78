"""Cloudflare Workers AI as an ImageProvider.

Each model's request is built from its ModelSpec (JSON or multipart, parameter names, which
optional fields it takes). The response shape is decided by the response Content-Type, never by
the model: ``image/*`` is raw bytes, JSON is an envelope with ``result.image`` in base64. The real
format is then sniffed from magic bytes, because a "PNG" envelope may hold a JPEG.

A JSON body that does not parse is retried once by CloudflareAPI as a server fault; a JSON
envelope that parses but holds no valid base64 image, and bytes that are not an image, raise a
plain ``ProviderError`` at once (the service answered, just not with an image; retrying the same
request is unlikely to help and would be billed again).

The moderation model (Llama Guard 3, ``moderate``) takes ``messages`` (roles alternating user /
assistant), ``max_tokens``, ``temperature`` and ``response_format``; asked for ``json_object``
its ``result.response`` is ``{"safe", "categories"}``, otherwise Llama Guard's text; both are
read (``bot.moderation.verdict_of``), and ``result.usage`` gives the tokens billed.
"""

from __future__ import annotations

import base64
import binascii
import logging
import math
from typing import Any

from bot.catalog import ModelSpec
from bot.cloudflare_api import CloudflareAPI
from bot.errors import InvalidRequest, ProviderError
from bot.http_headers import is_json, media_type
from bot.imaging import sniff_format
from bot.moderation import MAX_TOKENS, Verdict, estimate_input_tokens, verdict_of
from bot.providers.base import GeneratedImage, ImageRequest, TextCompletion

log = logging.getLogger(__name__)

MALFORMED = "The image service returned a malformed response."
NOT_AN_IMAGE = "The image service returned something that is not an image."


def build_fields(request: ImageRequest) -> dict[str, Any]:
    """The model's parameters (without any init image), only those the model accepts."""
    spec = request.model
    fields: dict[str, Any] = {"prompt": request.prompt}
    if spec.steps_param and not spec.fixed_steps:
        fields[spec.steps_param] = request.steps
    if not spec.fixed_size:
        fields["width"] = request.width
        fields["height"] = request.height
    if spec.supports_seed and request.seed is not None:
        fields["seed"] = request.seed
    # Some models reject an empty negative_prompt (minimum length 1): never send "".
    if (
        spec.supports_negative_prompt
        and request.negative_prompt
        and request.negative_prompt.strip()
    ):
        fields["negative_prompt"] = request.negative_prompt
    if spec.guidance is not None:
        fields["guidance"] = request.guidance if request.guidance is not None else spec.guidance[2]
    if spec.supports_strength and request.strength is not None:
        fields["strength"] = request.strength
    return fields


class CloudflareProvider:
    """ImageProvider over Workers AI ``/ai/run/{model}``."""

    name = "cloudflare"
    previews_only = False
    honours_every_seed = False
    moderates = True

    def __init__(self, api: CloudflareAPI) -> None:
        self._api = api

    async def generate(self, request: ImageRequest) -> GeneratedImage:
        spec = request.model
        fields = build_fields(request)
        init = request.init_image
        if init is not None and not spec.image_param:
            raise InvalidRequest("image", f"{spec.name} does not take a starting image.")
        path = f"/ai/run/{spec.id}"
        if spec.request_format == "multipart":
            files: dict[str, Any] = {key: (None, str(value)) for key, value in fields.items()}
            if init is not None and spec.image_param:
                init_format = sniff_format(init) or "png"
                files[spec.image_param] = (f"image.{init_format}", init, f"image/{init_format}")
            response = await self._api.request("POST", path, files=files, rate_limited=True)
        else:
            if init is not None and spec.image_param:
                fields[spec.image_param] = base64.b64encode(init).decode("ascii")
            response = await self._api.request("POST", path, json=fields, rate_limited=True)

        kind = media_type(response.headers.get("content-type", ""))
        if kind.startswith("image/"):
            data = response.content
        elif is_json(kind):
            data = self._decode_envelope(response.json())
        else:
            log.warning("Workers AI %s answered with content type %r", spec.id, kind)
            raise ProviderError(MALFORMED)
        fmt = sniff_format(data)
        if fmt is None:
            log.warning("Workers AI %s returned %d bytes that are not an image", spec.id, len(data))
            raise ProviderError(NOT_AN_IMAGE)
        return GeneratedImage(data=data, content_type=f"image/{fmt}", format=fmt)

    @staticmethod
    def _decode_envelope(body: Any) -> bytes:
        result = body.get("result") if isinstance(body, dict) else None
        encoded = result.get("image") if isinstance(result, dict) else None
        if not isinstance(encoded, str) or not encoded:
            raise ProviderError(MALFORMED)
        try:
            return base64.b64decode(encoded, validate=True)
        except (binascii.Error, ValueError):
            raise ProviderError(MALFORMED) from None

    async def complete(
        self, model: ModelSpec, system: str, user: str, *, max_tokens: int
    ) -> TextCompletion:
        body = {
            "messages": [
                {"role": "system", "content": system},
                {"role": "user", "content": user},
            ],
            "max_tokens": max_tokens,
            "temperature": 0.7,
        }
        response = await self._api.request("POST", f"/ai/run/{model.id}", json=body, expect="json")
        result = response.json().get("result")
        text = result.get("response") if isinstance(result, dict) else None
        if not isinstance(text, str):
            raise ProviderError("The text model returned a malformed response.")
        usage = result.get("usage") if isinstance(result, dict) else None
        usage = usage if isinstance(usage, dict) else {}
        input_tokens = usage.get("prompt_tokens")
        output_tokens = usage.get("completion_tokens")
        if not isinstance(input_tokens, int):
            input_tokens = math.ceil((len(system) + len(user)) / 4)
        if not isinstance(output_tokens, int):
            output_tokens = math.ceil(len(text) / 4)
        return TextCompletion(text=text, input_tokens=input_tokens, output_tokens=output_tokens)

    async def moderate(self, model: ModelSpec, text: str) -> Verdict:
        """Llama Guard on one user message; asked for its JSON verdict, its text form read too."""
        body = {
            "messages": [{"role": "user", "content": text}],
            "max_tokens": MAX_TOKENS,
            "temperature": 0,
            "response_format": {"type": "json_object"},
        }
        response = await self._api.request("POST", f"/ai/run/{model.id}", json=body, expect="json")
        result = response.json().get("result")
        verdict = verdict_of(result.get("response")) if isinstance(result, dict) else None
        if verdict is None:
            raise ProviderError("The content check returned a malformed response.")
        usage = result.get("usage") if isinstance(result, dict) else None
        usage = usage if isinstance(usage, dict) else {}
        input_tokens, output_tokens = usage.get("prompt_tokens"), usage.get("completion_tokens")
        return Verdict(
            safe=verdict[0],
            categories=verdict[1],
            input_tokens=input_tokens if isinstance(input_tokens, int) else
            estimate_input_tokens(text),
            output_tokens=output_tokens if isinstance(output_tokens, int) else MAX_TOKENS,
        )  # fmt: skip

    async def check(self) -> None:
        await self._api.request("GET", "/ai/models/search", params={"per_page": 1}, attempts=1)
