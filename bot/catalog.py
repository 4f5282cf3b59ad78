"""The model catalog: what each Workers AI model accepts, how it is called, and what it costs.

The built-in entries are data: ``bot/models.toml`` (following ../shared/reference/cloudflare.md),
read by the same loader and checks as the operator's TOML file (``MODELS_FILE``), which can
override prices, hide models or add new ones; see ``load_catalog``.

Cloudflare's pricing page lists no price for the Stable Diffusion family. Such a model is never
silently free: it carries the operator's price from ``MODELS_FILE`` when there is one, else the
operator's default (``UNPUBLISHED_MODEL_PRICE_USD`` per image), or it is hidden until priced when
that default is off. ``ModelSpec.price_note`` says which, for every front that lists models.
"""

from __future__ import annotations

import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from importlib import resources
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
CONTENT_MODERATION = "content-moderation"  # can be MODERATION_MODEL (Llama Guard)

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

    def at_most(self, limit: Cost) -> Cost:
        """Never more than ``limit`` in either unit (an actual charge within its reservation)."""
        return Cost(min(self.micro_usd, limit.micro_usd),
                    min(self.milli_neurons, limit.milli_neurons))  # fmt: skip


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


T2I = frozenset({TEXT_TO_IMAGE})
BUILTIN_MODELS_FILE = "models.toml"  # packaged next to this module, same format as MODELS_FILE


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

    def display_name(self, model_id: str | None, unknown: str = "?") -> str:
        """The model's name as people read it; its id (or ``unknown``) if not in the catalog."""
        spec = self.find(model_id or "")
        return spec.name if spec else (model_id or unknown)

    def _by_suffix(self, short: str) -> ModelSpec | None:
        matches = [m for m in self._models.values() if m.id.rsplit("/", 1)[-1] == short]
        return matches[0] if len(matches) == 1 else None


def _price_from_table(source: str, where: str, table: Mapping[str, Any], base: Price) -> Price:
    """Price terms come as ``<term>_neurons`` or ``<term>_usd`` keys, e.g. per_tile_usd."""
    terms: dict[str, int] = {}
    for key, value in table.items():
        for suffix, convert in (("_neurons", neurons_to_nano), ("_usd", usd_to_nano)):
            term = key.removesuffix(suffix)
            if key.endswith(suffix) and term in PRICE_TERMS:
                try:
                    terms[term] = convert(str(value))
                except ValueError as exc:
                    raise ConfigError(source, f"{where}.price.{key}: {exc}") from None
                break
        else:
            raise ConfigError(
                source,
                f"{where}.price.{key}: unknown price term (use e.g. per_tile_neurons or "
                "per_step_usd)",
            )
    return replace(base, **terms)


def _spec_from_table(
    source: str, where: str, table: Mapping[str, Any], base: ModelSpec | None
) -> ModelSpec:
    unknown = (set(table) - _SPEC_FIELDS) | (set(table) & _NOT_CONFIGURABLE)
    if unknown:
        raise ConfigError(source, f"{where}: unknown keys {sorted(unknown)}")
    values: dict[str, Any] = {
        k: v for k, v in table.items() if k not in _TYPED_FIELDS or k == "name"
    }
    if "capabilities" in table:
        values["capabilities"] = frozenset(table["capabilities"])
    if table.get("steps_param") == "":  # TOML has no null: "" means no steps parameter
        values["steps_param"] = None
    if "guidance" in table:
        values["guidance"] = tuple(float(x) for x in table["guidance"])
    if "price" in table:
        values["price"] = _price_from_table(
            source, where, table["price"], base.price if base else Price()
        )
    try:
        if base is not None:
            return replace(base, **values)
        values.setdefault("capabilities", T2I)
        values.setdefault("name", table.get("id", where))
        if "price" not in values:  # an added model without a price is priced like unpublished
            values.update(price=Price(), price_published=False)
        return ModelSpec(id=str(table["id"]), **values)
    except (TypeError, KeyError) as exc:
        raise ConfigError(source, f"{where}: {exc}") from None


_INT_FIELDS = {
    "min_side", "max_side", "size_multiple", "default_width", "default_height", "min_steps",
    "max_steps", "default_steps", "max_input_side", "max_prompt_chars",
}  # fmt: skip
_BOOL_FIELDS = {
    "fixed_size", "fixed_steps", "supports_seed", "supports_negative_prompt",
    "supports_strength", "enabled",
}  # fmt: skip


def _check_spec(source: str, where: str, table: Mapping[str, Any], spec: ModelSpec) -> ModelSpec:
    """Types and limits that agree with each other; a clear ConfigError otherwise."""
    for key in table:
        value = table[key]
        if key in _INT_FIELDS and (not isinstance(value, int) or isinstance(value, bool)):
            raise ConfigError(source, f"{where}.{key}: must be a whole number")
        if key in _BOOL_FIELDS and not isinstance(value, bool):
            raise ConfigError(source, f"{where}.{key}: must be true or false")
        if key in ("name", "description", "request_format") and not isinstance(value, str):
            raise ConfigError(source, f"{where}.{key}: must be text")
    if spec.request_format not in ("json", "multipart"):
        raise ConfigError(source, f"{where}.request_format: must be json or multipart")
    if not 1 <= spec.min_steps <= spec.default_steps <= spec.max_steps:
        raise ConfigError(source, f"{where}: needs min_steps ≤ default_steps ≤ max_steps")
    for side in (spec.default_width, spec.default_height):
        if not 16 <= spec.min_side <= side <= spec.max_side:
            raise ConfigError(source, f"{where}: needs 16 ≤ min_side ≤ default sizes ≤ max_side")
    if spec.size_multiple < 1:
        raise ConfigError(source, f"{where}.size_multiple: must be at least 1")
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
        priced = _apply_entries("MODELS_FILE", _read_models_file(path), models)
    return Catalog(_priced(m, m.id in priced, unpublished_nano_usd) for m in models.values())


def _read_models_file(path: Path) -> list[Any]:
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError("MODELS_FILE", "file not found") from None
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError("MODELS_FILE", f"cannot be read as TOML ({exc})") from None
    return _model_entries("MODELS_FILE", data)


def _model_entries(source: str, data: Mapping[str, Any]) -> list[Any]:
    entries = data.get("model", [])
    if not isinstance(entries, list):
        raise ConfigError(source, "expected [[model]] tables")
    return entries


def _apply_entries(source: str, entries: list[Any], models: dict[str, ModelSpec]) -> set[str]:
    """Apply ``[[model]]`` entries to ``models`` (override or add); the ids whose price they set.

    ``source`` names the file in errors: MODELS_FILE, or the packaged catalog.
    """
    priced: set[str] = set()
    for index, entry in enumerate(entries):
        where = f"model[{index}]"
        if not isinstance(entry, dict) or not isinstance(entry.get("id"), str):
            raise ConfigError(source, f"{where}: needs an id")
        spec = _spec_from_table(source, where, entry, models.get(entry["id"]))
        models[entry["id"]] = _check_spec(source, where, entry, spec)
        if "price" in entry:
            priced.add(entry["id"])
    return priced


def _read_builtin_models() -> tuple[ModelSpec, ...]:
    """The packaged catalog (``bot/models.toml``), read and checked like a MODELS_FILE."""
    text = resources.files("bot").joinpath(BUILTIN_MODELS_FILE).read_text(encoding="utf-8")
    models: dict[str, ModelSpec] = {}
    _apply_entries(
        BUILTIN_MODELS_FILE, _model_entries(BUILTIN_MODELS_FILE, tomllib.loads(text)), models
    )
    return tuple(models.values())


BUILTIN_MODELS = _read_builtin_models()
