"""The model catalog: what each Workers AI model accepts, how it is called, and what it costs.

Built-in entries follow ../shared/reference/cloudflare.md. An operator can override prices, hide
models or add new ones with a TOML file (``MODELS_FILE``); see ``load_catalog``.

Cloudflare's pricing page lists no price for the Stable Diffusion family. Such a model is never
silently free: it carries the operator's price from ``MODELS_FILE`` when there is one, else the
operator's default (``UNPUBLISHED_MODEL_PRICE_USD`` per image), or it is hidden until priced when
that default is off. ``ModelSpec.price_note`` says which, for every front that lists models.
"""

from __future__ import annotations

import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

from bot.errors import ConfigError, InvalidModel
from bot.money import (
    ceil_div,
    nano_to_micro_usd,
    nano_usd_to_milli_neurons,
    neurons_to_nano,
    usd_to_nano,
)

TEXT_TO_IMAGE = "text-to-image"
IMAGE_TO_IMAGE = "image-to-image"
TEXT_GENERATION = "text-generation"

TILE_SIDE = 512
# Per image, for a model whose price Cloudflare does not publish and the operator did not set.
DEFAULT_UNPUBLISHED_PRICE_NANO_USD = 2_000_000  # $0.002
# Cloudflare's megapixel for per-megapixel prices: the first one is defined as 1024×1024.
MEGAPIXEL = 1024 * 1024


@dataclass(frozen=True)
class Price:
    """A linear price formula; every term in nano-dollars (exact integers).

    tiles = ceil(w/512) × ceil(h/512) of the output; input_tiles the same for an init image;
    megapixels are 1024×1024 pixels; further_megapixels = output megapixels beyond the first,
    rounded up.
    """

    per_image: int = 0
    per_tile: int = 0
    per_step: int = 0
    per_tile_step: int = 0
    per_input_tile: int = 0
    per_input_tile_step: int = 0
    first_megapixel: int = 0
    per_further_megapixel: int = 0
    per_input_megapixel: int = 0
    per_million_input_tokens: int = 0
    per_million_output_tokens: int = 0

    def image_nano_usd(
        self, width: int, height: int, steps: int, input_size: tuple[int, int] | None = None
    ) -> int:
        tiles = ceil_div(width, TILE_SIDE) * ceil_div(height, TILE_SIDE)
        in_tiles = 0
        in_megapixels = 0
        if input_size is not None:
            in_tiles = ceil_div(input_size[0], TILE_SIDE) * ceil_div(input_size[1], TILE_SIDE)
            in_megapixels = ceil_div(input_size[0] * input_size[1], MEGAPIXEL)
        further_mp = max(0, ceil_div(width * height - MEGAPIXEL, MEGAPIXEL))
        return (
            self.per_image
            + self.per_tile * tiles
            + self.per_step * steps
            + self.per_tile_step * tiles * steps
            + self.per_input_tile * in_tiles
            + self.per_input_tile_step * in_tiles * steps
            + self.first_megapixel
            + self.per_further_megapixel * further_mp
            + self.per_input_megapixel * in_megapixels
        )

    def tokens_nano_usd(self, input_tokens: int, output_tokens: int) -> int:
        return ceil_div(
            self.per_million_input_tokens * input_tokens
            + self.per_million_output_tokens * output_tokens,
            1_000_000,
        )


@dataclass(frozen=True)
class Cost:
    """What one call costs, in the two integer units the ledger keeps."""

    micro_usd: int
    milli_neurons: int

    @classmethod
    def from_nano_usd(cls, nano_usd: int) -> Cost:
        return cls(nano_to_micro_usd(nano_usd), nano_usd_to_milli_neurons(nano_usd))

    def __add__(self, other: Cost) -> Cost:
        return Cost(self.micro_usd + other.micro_usd, self.milli_neurons + other.milli_neurons)


ZERO_COST = Cost(0, 0)


@dataclass(frozen=True)
class ModelSpec:
    """One model: its limits, its parameters, how its request is sent and its price."""

    id: str
    name: str
    capabilities: frozenset[str]
    price: Price
    request_format: Literal["json", "multipart"] = "json"
    min_side: int = 256
    max_side: int = 2048
    size_multiple: int = 8
    default_width: int = 1024
    default_height: int = 1024
    fixed_size: bool = False
    min_steps: int = 1
    max_steps: int = 20
    default_steps: int = 20
    fixed_steps: bool = False
    steps_param: str | None = "num_steps"
    supports_seed: bool = True
    supports_negative_prompt: bool = False
    guidance: tuple[float, float, float] | None = None  # (min, max, default)
    supports_strength: bool = False
    image_param: str | None = None  # 'image_b64' (JSON) or 'input_image_0' (multipart)
    max_input_side: int | None = None
    max_prompt_chars: int = 2048
    typical_seconds: float = 5.0
    enabled: bool = True
    description: str = ""
    price_published: bool = True  # False: Cloudflare's pricing page lists no price for it
    price_source: Literal["cloudflare", "operator", "default"] = "cloudflare"
    extra: Mapping[str, Any] = field(default_factory=dict)

    @property
    def is_text_model(self) -> bool:
        return TEXT_GENERATION in self.capabilities

    @property
    def image_to_image(self) -> bool:
        return IMAGE_TO_IMAGE in self.capabilities

    @property
    def text_to_image(self) -> bool:
        return TEXT_TO_IMAGE in self.capabilities

    def image_cost(
        self, width: int, height: int, steps: int, input_size: tuple[int, int] | None = None
    ) -> Cost:
        return Cost.from_nano_usd(self.price.image_nano_usd(width, height, steps, input_size))

    def default_cost(self) -> Cost:
        return self.image_cost(self.default_width, self.default_height, self.default_steps)

    @property
    def price_note(self) -> str:
        """Where the price comes from, when it is not Cloudflare's published one ('' if it is)."""
        if self.price_source == "cloudflare":
            return ""
        set_how = (
            "price set by the operator"
            if self.price_source == "operator"
            else "charged at the operator's default price per image"
        )
        note = set_how if self.price_published else f"price not published by Cloudflare; {set_how}"
        return note[0].upper() + note[1:]


def _neurons(text: str) -> int:
    return neurons_to_nano(text)


def _usd(text: str) -> int:
    return usd_to_nano(text)


T2I = frozenset({TEXT_TO_IMAGE})
I2I = frozenset({IMAGE_TO_IMAGE})
BOTH = frozenset({TEXT_TO_IMAGE, IMAGE_TO_IMAGE})
# What the Stable Diffusion family on Workers AI shares.
SD_FAMILY: dict[str, Any] = {
    "price": Price(),  # unpublished: replaced when the catalog is loaded (see load_catalog)
    "price_published": False,
    "min_side": 256,
    "max_side": 2048,
    "size_multiple": 8,
    "supports_negative_prompt": True,
    "guidance": (0.0, 30.0, 7.5),
}

# What the FLUX.2 family shares: multipart requests, up to four ≤ 512 px reference images.
FLUX2_FAMILY: dict[str, Any] = {
    "capabilities": BOTH,
    "request_format": "multipart",
    "min_side": 256,
    "max_side": 1920,
    "default_width": 1024,
    "default_height": 768,
    "image_param": "input_image_0",
    "max_input_side": 512,
}
# klein models run a fixed 4 steps and take no steps parameter.
KLEIN_STEPS: dict[str, Any] = {
    "min_steps": 4,
    "max_steps": 4,
    "default_steps": 4,
    "fixed_steps": True,
    "steps_param": None,
}

BUILTIN_MODELS: tuple[ModelSpec, ...] = (
    ModelSpec(
        id="@cf/black-forest-labs/flux-1-schnell",
        name="FLUX.1 [schnell]",
        capabilities=T2I,
        price=Price(per_tile=_neurons("4.8"), per_step=_neurons("9.6")),
        fixed_size=True,
        min_side=1024,
        max_side=1024,
        min_steps=1,
        max_steps=8,
        default_steps=4,
        steps_param="steps",
        supports_seed=False,
        typical_seconds=3.0,
        description="Fast, good all-rounder. Always 1024×1024.",
    ),
    ModelSpec(
        id="@cf/stabilityai/stable-diffusion-xl-base-1.0",
        name="Stable Diffusion XL",
        capabilities=T2I,
        **SD_FAMILY,
        typical_seconds=12.0,
        description="Detailed images; slower.",
    ),
    ModelSpec(
        id="@cf/bytedance/stable-diffusion-xl-lightning",
        name="SDXL Lightning",
        capabilities=T2I,
        **SD_FAMILY,
        typical_seconds=3.0,
        description="SDXL in a few steps.",
    ),
    ModelSpec(
        id="@cf/lykon/dreamshaper-8-lcm",
        name="DreamShaper 8 LCM",
        capabilities=T2I,
        **SD_FAMILY,
        typical_seconds=4.0,
        description="Photographic and painterly styles.",
    ),
    ModelSpec(
        id="@cf/runwayml/stable-diffusion-v1-5-img2img",
        name="Stable Diffusion 1.5 img2img",
        capabilities=I2I,
        **SD_FAMILY,
        supports_strength=True,
        image_param="image_b64",
        typical_seconds=8.0,
        description="Reworks a starting image following the prompt.",
    ),
    ModelSpec(
        id="@cf/leonardo/phoenix-1.0",
        name="Leonardo Phoenix 1.0",
        capabilities=T2I,
        price=Price(per_tile=_usd("0.005830"), per_step=_usd("0.000110")),
        min_side=256,
        max_side=2048,
        min_steps=1,
        max_steps=50,
        default_steps=25,
        supports_negative_prompt=True,
        guidance=(2.0, 10.0, 2.0),
        typical_seconds=10.0,
        description="Strong prompt adherence and legible text in images.",
    ),
    ModelSpec(
        id="@cf/leonardo/lucid-origin",
        name="Leonardo Lucid Origin",
        capabilities=T2I,
        price=Price(per_tile=_usd("0.006996"), per_step=_usd("0.000132")),
        min_side=256,
        max_side=2500,
        default_width=1120,
        default_height=1120,
        min_steps=1,
        max_steps=40,
        default_steps=25,
        guidance=(0.0, 10.0, 4.5),
        typical_seconds=10.0,
        description="Vivid, highly detailed images.",
    ),
    ModelSpec(
        id="@cf/black-forest-labs/flux-2-dev",
        name="FLUX.2 [dev]",
        price=Price(per_input_tile_step=_usd("0.00021"), per_tile_step=_usd("0.00041")),
        **FLUX2_FAMILY,
        min_steps=1,
        max_steps=50,
        default_steps=25,
        steps_param="steps",
        guidance=(0.0, 20.0, 4.0),
        typical_seconds=15.0,
        description="Highest quality FLUX; accepts reference images.",
    ),
    ModelSpec(
        id="@cf/black-forest-labs/flux-2-klein-4b",
        name="FLUX.2 [klein] 4B",
        price=Price(per_input_tile=_usd("0.000059"), per_tile=_usd("0.000287")),
        **FLUX2_FAMILY,
        **KLEIN_STEPS,
        typical_seconds=3.0,
        description="Fast and cheap FLUX.2; accepts reference images.",
    ),
    ModelSpec(
        id="@cf/black-forest-labs/flux-2-klein-9b",
        name="FLUX.2 [klein] 9B",
        price=Price(
            first_megapixel=_usd("0.015"),
            per_further_megapixel=_usd("0.002"),
            per_input_megapixel=_usd("0.002"),
        ),
        **FLUX2_FAMILY,
        **KLEIN_STEPS,
        typical_seconds=5.0,
        description="Sharper FLUX.2 klein; accepts reference images.",
    ),
    ModelSpec(
        id="@cf/meta/llama-3.1-8b-instruct-fp8-fast",
        name="Llama 3.1 8B (prompt enhancer)",
        capabilities=frozenset({TEXT_GENERATION}),
        price=Price(
            per_million_input_tokens=_neurons("4119"),
            per_million_output_tokens=_neurons("34868"),
        ),
        steps_param=None,
        supports_seed=False,
        typical_seconds=1.0,
        description="Rewrites short prompts into detailed ones.",
    ),
)

PRICE_TERMS = {f for f in Price.__dataclass_fields__}
_SPEC_FIELDS = set(ModelSpec.__dataclass_fields__)
_TYPED_FIELDS = {"id", "name", "capabilities", "price", "guidance", "extra"}
_NOT_CONFIGURABLE = {"extra", "price_published", "price_source"}


class Catalog:
    """The models an operator offers. Lookups by id; hidden models are kept but not offered."""

    def __init__(self, models: Iterable[ModelSpec]) -> None:
        self._models = {m.id: m for m in models}

    def __iter__(self) -> Any:
        return iter(self._models.values())

    def all(self) -> list[ModelSpec]:
        return list(self._models.values())

    def enabled_image_models(self) -> list[ModelSpec]:
        return [m for m in self._models.values() if m.enabled and not m.is_text_model]

    def get(self, model_id: str) -> ModelSpec:
        """The enabled model with this id (or unambiguous short name); InvalidModel otherwise."""
        spec = self._models.get(model_id) or self._by_suffix(model_id)
        if spec is None or not spec.enabled:
            raise InvalidModel(model_id)
        return spec

    def find(self, model_id: str) -> ModelSpec | None:
        """Any model with this id, enabled or not (for pricing history and details)."""
        return self._models.get(model_id)

    def _by_suffix(self, short: str) -> ModelSpec | None:
        matches = [m for m in self._models.values() if m.id.rsplit("/", 1)[-1] == short]
        return matches[0] if len(matches) == 1 else None


def _price_from_table(where: str, table: Mapping[str, Any], base: Price) -> Price:
    """Price terms come as ``<term>_neurons`` or ``<term>_usd`` keys, e.g. per_tile_usd."""
    terms: dict[str, int] = {}
    for key, value in table.items():
        for suffix, convert in (("_neurons", neurons_to_nano), ("_usd", usd_to_nano)):
            term = key.removesuffix(suffix)
            if key.endswith(suffix) and term in PRICE_TERMS:
                try:
                    terms[term] = convert(str(value))
                except ValueError as exc:
                    raise ConfigError("MODELS_FILE", f"{where}.price.{key}: {exc}") from None
                break
        else:
            raise ConfigError(
                "MODELS_FILE",
                f"{where}.price.{key}: unknown price term (use e.g. per_tile_neurons or "
                "per_step_usd)",
            )
    return replace(base, **terms)


def _spec_from_table(where: str, table: Mapping[str, Any], base: ModelSpec | None) -> ModelSpec:
    unknown = (set(table) - _SPEC_FIELDS) | (set(table) & _NOT_CONFIGURABLE)
    if unknown:
        raise ConfigError("MODELS_FILE", f"{where}: unknown keys {sorted(unknown)}")
    values: dict[str, Any] = {
        k: v for k, v in table.items() if k not in _TYPED_FIELDS or k == "name"
    }
    if "capabilities" in table:
        values["capabilities"] = frozenset(table["capabilities"])
    if "guidance" in table:
        values["guidance"] = tuple(float(x) for x in table["guidance"])
    if "price" in table:
        values["price"] = _price_from_table(where, table["price"], base.price if base else Price())
    try:
        if base is not None:
            return replace(base, **values)
        values.setdefault("capabilities", T2I)
        values.setdefault("name", table.get("id", where))
        if "price" not in values:  # an added model without a price is priced like unpublished
            values.update(price=Price(), price_published=False)
        return ModelSpec(id=str(table["id"]), **values)
    except (TypeError, KeyError) as exc:
        raise ConfigError("MODELS_FILE", f"{where}: {exc}") from None


_INT_FIELDS = {
    "min_side", "max_side", "size_multiple", "default_width", "default_height", "min_steps",
    "max_steps", "default_steps", "max_input_side", "max_prompt_chars",
}  # fmt: skip
_BOOL_FIELDS = {
    "fixed_size", "fixed_steps", "supports_seed", "supports_negative_prompt",
    "supports_strength", "enabled",
}  # fmt: skip


def _check_spec(where: str, table: Mapping[str, Any], spec: ModelSpec) -> ModelSpec:
    """Types and limits that agree with each other; a clear ConfigError otherwise."""
    for key in table:
        value = table[key]
        if key in _INT_FIELDS and (not isinstance(value, int) or isinstance(value, bool)):
            raise ConfigError("MODELS_FILE", f"{where}.{key}: must be a whole number")
        if key in _BOOL_FIELDS and not isinstance(value, bool):
            raise ConfigError("MODELS_FILE", f"{where}.{key}: must be true or false")
        if key in ("name", "description", "request_format") and not isinstance(value, str):
            raise ConfigError("MODELS_FILE", f"{where}.{key}: must be text")
    if spec.request_format not in ("json", "multipart"):
        raise ConfigError("MODELS_FILE", f"{where}.request_format: must be json or multipart")
    if not 1 <= spec.min_steps <= spec.default_steps <= spec.max_steps:
        raise ConfigError("MODELS_FILE", f"{where}: needs min_steps ≤ default_steps ≤ max_steps")
    for side in (spec.default_width, spec.default_height):
        if not 16 <= spec.min_side <= side <= spec.max_side:
            raise ConfigError(
                "MODELS_FILE", f"{where}: needs 16 ≤ min_side ≤ default sizes ≤ max_side"
            )
    if spec.size_multiple < 1:
        raise ConfigError("MODELS_FILE", f"{where}.size_multiple: must be at least 1")
    return spec


def _priced(spec: ModelSpec, operator_priced: bool, unpublished_nano_usd: int | None) -> ModelSpec:
    """Say where the price comes from; give an unpublished, unset price the operator's default
    (or hide the model until it is priced, when there is no default)."""
    if operator_priced:
        return replace(spec, price_source="operator")
    if spec.price_published:
        return spec
    if unpublished_nano_usd is None:
        return replace(spec, enabled=False, price_source="default")
    return replace(spec, price=Price(per_image=unpublished_nano_usd), price_source="default")


def load_catalog(
    path: Path | None, unpublished_nano_usd: int | None = DEFAULT_UNPUBLISHED_PRICE_NANO_USD
) -> Catalog:
    """The built-in catalog, with the operator's TOML overrides applied when a file is given.

    A model whose price Cloudflare does not publish and the file does not set costs
    ``unpublished_nano_usd`` per image; with None it is hidden until the file prices it.

    Format::

        [[model]]                      # override a built-in model
        id = "@cf/leonardo/phoenix-1.0"
        enabled = false                # hide it

        [[model]]
        id = "@cf/stabilityai/stable-diffusion-xl-base-1.0"
        price = { per_step_neurons = 2.5 }

        [[model]]                      # add a new one
        id = "@cf/vendor/new-model"
        name = "New model"
        max_steps = 30
        price = { per_tile_usd = 0.001 }
    """
    models = {m.id: m for m in BUILTIN_MODELS}
    priced: set[str] = set()
    if path is not None:
        priced = _apply_models_file(path, models)
    return Catalog(_priced(m, m.id in priced, unpublished_nano_usd) for m in models.values())


def _apply_models_file(path: Path, models: dict[str, ModelSpec]) -> set[str]:
    """Apply the TOML file's entries to ``models``; the ids whose price it sets."""
    priced: set[str] = set()
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError("MODELS_FILE", "file not found") from None
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError("MODELS_FILE", f"cannot be read as TOML ({exc})") from None
    entries = data.get("model", [])
    if not isinstance(entries, list):
        raise ConfigError("MODELS_FILE", "expected [[model]] tables")
    for index, entry in enumerate(entries):
        where = f"model[{index}]"
        if not isinstance(entry, dict) or not isinstance(entry.get("id"), str):
            raise ConfigError("MODELS_FILE", f"{where}: needs an id")
        spec = _spec_from_table(where, entry, models.get(entry["id"]))
        models[entry["id"]] = _check_spec(where, entry, spec)
        if "price" in entry:
            priced.add(entry["id"])
    return priced
