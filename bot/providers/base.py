"""The provider protocol: something that turns an ImageRequest into image bytes.

Two implementations: Cloudflare Workers AI (``cloudflare.py``) and the embedded local preview
renderer (``local.py``). The service picks one at start-up and never looks inside it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from bot.catalog import ModelSpec
from bot.moderation import Verdict


@dataclass(frozen=True)
class ImageRequest:
    """A fully validated generation request: every value is inside the model's limits."""

    model: ModelSpec
    prompt: str
    width: int
    height: int
    steps: int
    seed: int | None = None
    negative_prompt: str | None = None
    guidance: float | None = None
    strength: float | None = None
    init_image: bytes | None = None


@dataclass(frozen=True)
class GeneratedImage:
    """Image bytes as the provider returned them, with the format sniffed from magic bytes."""

    data: bytes
    content_type: str
    format: str


@dataclass(frozen=True)
class TextCompletion:
    """A text model's answer and the tokens it was billed for."""

    text: str
    input_tokens: int
    output_tokens: int


class ImageProvider(Protocol):
    name: str
    # True for a renderer that draws previews, not AI images (fronts say so to the user).
    previews_only: bool
    # True when every model honours the seed (so a record may show it); otherwise only models
    # whose catalog entry says ``supports_seed``.
    honours_every_seed: bool
    # True when ``moderate`` can check a prompt (the content rules need it).
    moderates: bool

    async def generate(self, request: ImageRequest) -> GeneratedImage:
        """Generate one image. Raises a ``bot.errors.ProviderError`` subclass on failure."""
        ...

    async def complete(
        self, model: ModelSpec, system: str, user: str, *, max_tokens: int
    ) -> TextCompletion:
        """Run a text model (prompt enhancement). Raises ``ProviderError`` on failure."""
        ...

    async def moderate(self, model: ModelSpec, text: str) -> Verdict:
        """Check ``text`` with a moderation model (Llama Guard). Raises ``ProviderError``."""
        ...

    async def check(self) -> None:
        """Cheap reachability check for health endpoints; raises ``ProviderError`` if down."""
        ...
