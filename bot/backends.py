"""The provider and store this bot runs on, shared by every part of the service.

One mutable holder, so that every part (the generation pipeline, the image library, deletion)
always uses the same pair, and replacing one (tests and benchmarks do) reaches all of them.
"""

from __future__ import annotations

from dataclasses import dataclass

from bot.providers.base import ImageProvider
from bot.stores.base import ImageStore


@dataclass
class Backends:
    provider: ImageProvider
    store: ImageStore
