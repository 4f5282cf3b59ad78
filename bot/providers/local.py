"""The embedded local provider: a deterministic preview renderer (Pillow), not AI.

It exists so the whole product runs and is tested with no account and no network: the same
(prompt, seed, size) always gives the same picture, drawn off the event loop.
"""

from __future__ import annotations

import asyncio

from bot import imaging
from bot.catalog import ModelSpec
from bot.enhance import offline_enhance
from bot.moderation import Verdict, offline_verdict
from bot.providers.base import GeneratedImage, ImageRequest, TextCompletion


class LocalProvider:
    name = "local"
    previews_only = True
    honours_every_seed = True  # the same (prompt, seed, size) always draws the same picture
    moderates = True  # a word list per Llama Guard category (bot.moderation), not a model

    async def generate(self, request: ImageRequest) -> GeneratedImage:
        seed = request.seed if request.seed is not None else 0
        if request.init_image is not None:
            strength = request.strength if request.strength is not None else 0.6
            data = await asyncio.to_thread(
                imaging.render_preview_from,
                request.init_image,
                request.prompt,
                seed=seed,
                width=request.width,
                height=request.height,
                strength=strength,
            )
        else:
            data = await asyncio.to_thread(
                imaging.render_preview,
                request.prompt,
                seed=seed,
                width=request.width,
                height=request.height,
                negative_prompt=request.negative_prompt,
            )
        return GeneratedImage(data=data, content_type="image/png", format="png")

    async def complete(
        self, model: ModelSpec, system: str, user: str, *, max_tokens: int
    ) -> TextCompletion:
        text = offline_enhance(user)
        return TextCompletion(text=text, input_tokens=0, output_tokens=0)

    async def moderate(self, model: ModelSpec, text: str) -> Verdict:
        return offline_verdict(text)

    async def check(self) -> None:
        return None
