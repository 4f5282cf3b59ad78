"""The catalog and integer money, against the formulas in ../shared/reference/cloudflare.md.

Expected figures are worked out by hand in the comments: nano-dollars exactly, then rounded up
once to micro-dollars and to milli-Neurons ($0.011 per 1,000 Neurons = 11 nano-dollars per
milli-Neuron).
"""

from __future__ import annotations

import dataclasses
import tomllib
from importlib import resources
from pathlib import Path

import pytest

from bot.catalog import BUILTIN_MODELS, TILE_SIDE, Catalog, Cost, Price, load_catalog
from bot.errors import ConfigError, InvalidModel
from bot.money import format_neurons, format_usd, usd_to_micro

SCHNELL = "@cf/black-forest-labs/flux-1-schnell"
SDXL = "@cf/stabilityai/stable-diffusion-xl-base-1.0"
PHOENIX = "@cf/leonardo/phoenix-1.0"
LUCID = "@cf/leonardo/lucid-origin"
FLUX2_DEV = "@cf/black-forest-labs/flux-2-dev"
KLEIN_4B = "@cf/black-forest-labs/flux-2-klein-4b"
KLEIN_9B = "@cf/black-forest-labs/flux-2-klein-9b"
LLAMA = "@cf/meta/llama-3.1-8b-instruct-fp8-fast"


@pytest.fixture
def catalog() -> Catalog:
    return load_catalog(None)


def write_models(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "models.toml"
    path.write_text(text, encoding="utf-8")
    return path


# --------------------------------------------------------------------------- built-in prices


def test_flux_schnell_1024_at_4_steps_is_57_6_neurons(catalog: Catalog) -> None:
    spec = catalog.get(SCHNELL)
    # 4 tiles × 4.8 + 4 steps × 9.6 = 19.2 + 38.4 = 57.6 Neurons = 633,600 nano-dollars.
    assert spec.price.image_nano_usd(1024, 1024, 4) == 633_600
    cost = spec.image_cost(1024, 1024, 4)
    assert cost == Cost(micro_usd=634, milli_neurons=57_600)  # $0.0006336 rounded up
    assert spec.default_cost() == cost
    assert (spec.default_width, spec.default_height, spec.default_steps) == (1024, 1024, 4)
    assert format_usd(cost.micro_usd) == "$0.000634"
    assert format_neurons(cost.milli_neurons) == "57.6"
    # One step more: 4 × 4.8 + 5 × 9.6 = 67.2 Neurons = 739,200 nano → 740 µ$.
    assert spec.image_cost(1024, 1024, 5) == Cost(740, 67_200)


@pytest.mark.parametrize(
    ("model", "expected"),
    [
        # 1024×1024 = 2×2 tiles: 4 × $0.005830 + 25 × $0.000110 = $0.02332 + $0.00275
        # = $0.02607 = 26,070,000 nano; / 11 = 2,370,000 mN exactly.
        (PHOENIX, Cost(26_070, 2_370_000)),
        # 1120×1120 = ceil(1120/512)² = 3×3 = 9 tiles: 9 × $0.006996 + 25 × $0.000132
        # = $0.062964 + $0.0033 = $0.066264 = 66,264,000 nano; / 11 = 6,024,000 mN exactly.
        (LUCID, Cost(66_264, 6_024_000)),
        # 1024×768 = 2×2 tiles, 25 steps, no input: 4 × 25 × $0.00041 = $0.041
        # = 41,000,000 nano; / 11 = 3,727,272.7… → 3,727,273.
        (FLUX2_DEV, Cost(41_000, 3_727_273)),
        # 1024×768 = 4 tiles × $0.000287 = $0.001148 = 1,148,000 nano; / 11 = 104,363.6… → 104,364
        (KLEIN_4B, Cost(1_148, 104_364)),
        # 1024×768 = 0.786 MP: only the first megapixel, $0.015 = 15,000,000 nano
        # / 11 = 1,363,636.3… → 1,363,637.
        (KLEIN_9B, Cost(15_000, 1_363_637)),
    ],
)
def test_default_costs_by_hand(catalog: Catalog, model: str, expected: Cost) -> None:
    assert catalog.get(model).default_cost() == expected


def test_lucid_origin_default_size_is_three_by_three_tiles(catalog: Catalog) -> None:
    spec = catalog.get(LUCID)
    assert (spec.default_width, spec.default_height) == (1120, 1120)
    nine_tiles = spec.price.image_nano_usd(1120, 1120, 0)
    assert nine_tiles == 9 * 6_996_000
    assert spec.price.image_nano_usd(1536, 1536, 0) == nine_tiles  # still 3×3
    assert spec.price.image_nano_usd(1537, 1536, 0) == 12 * 6_996_000  # 4×3


def test_flux_2_dev_charges_input_tiles_per_step(catalog: Catalog) -> None:
    spec = catalog.get(FLUX2_DEV)
    # Output 4 tiles × 25 steps × $0.00041 = $0.041; a 512×512 input = 1 tile × 25 × $0.00021
    # = $0.00525; total $0.04625 = 46,250,000 nano; / 11 = 4,204,545.4… → 4,204,546 mN.
    assert spec.image_cost(1024, 768, 25, (512, 512)) == Cost(46_250, 4_204_546)
    # A 600×400 input is 2×1 tiles: + 2 × 25 × $0.00021 = $0.0105 → $0.0515.
    assert spec.image_cost(1024, 768, 25, (600, 400)).micro_usd == 51_500
    # 10 steps, no input: 4 × 10 × $0.00041 = $0.0164.
    assert spec.image_cost(1024, 768, 10).micro_usd == 16_400


def test_flux_2_klein_4b_with_an_input_image(catalog: Catalog) -> None:
    spec = catalog.get(KLEIN_4B)
    # 4 output tiles × $0.000287 + 1 input tile × $0.000059 = $0.001207.
    assert spec.image_cost(1024, 768, 4, (512, 512)).micro_usd == 1_207
    # Steps are not part of this price.
    assert spec.image_cost(1024, 768, 1) == spec.image_cost(1024, 768, 4)


def test_flux_2_klein_9b_first_and_further_megapixels(catalog: Catalog) -> None:
    spec = catalog.get(KLEIN_9B)
    # Cloudflare's first megapixel is 1024×1024 = 1,048,576 px: a square 1024² is $0.015,
    # not $0.017 (13% more) as a decimal megapixel would make it.
    assert spec.price.image_nano_usd(1024, 1024, 4) == 15_000_000
    assert spec.image_cost(1024, 1024, 4) == Cost(15_000, 1_363_637)
    assert spec.price.image_nano_usd(1000, 1001, 4) == 15_000_000  # 1,001,000 px: still first
    # 1024×1025 is just over: one further MP (rounded up) = $0.015 + $0.002.
    assert spec.price.image_nano_usd(1024, 1025, 4) == 17_000_000
    # 1920×1080 = 2,073,600 px = 1.98 MP: one further MP = $0.017.
    assert spec.image_cost(1920, 1080, 4).micro_usd == 17_000
    # 1920×1920 = 3,686,400 px = 3.52 MP: three further MPs = $0.021.
    assert spec.image_cost(1920, 1920, 4).micro_usd == 21_000
    # A 512×512 input image is one input MP (rounded up): + $0.002.
    assert spec.image_cost(1024, 768, 4, (512, 512)).micro_usd == 17_000


def test_llama_is_priced_per_token(catalog: Catalog) -> None:
    spec = catalog.find(LLAMA)
    assert spec is not None
    assert spec.is_text_model
    price = spec.price
    # 4,119 Neurons per million input tokens = 45,309,000 nano per million.
    assert price.tokens_nano_usd(1_000_000, 0) == 4_119 * 11_000
    # 34,868 Neurons per million output tokens = 383,548,000 nano per million.
    assert price.tokens_nano_usd(0, 1_000_000) == 34_868 * 11_000
    # 1,000 in + 200 out: 45,309 + 76,709.6 = 122,018.6 → 122,019 nano (rounded up once).
    nano = price.tokens_nano_usd(1_000, 200)
    assert nano == 122_019
    # 4.119 + 6.9736 = 11.0926 Neurons → 11,093 mN; 122.019 → 123 µ$.
    assert Cost.from_nano_usd(nano) == Cost(123, 11_093)
    assert price.tokens_nano_usd(1, 0) == 46  # 45.309 rounded up
    assert price.tokens_nano_usd(0, 0) == 0


@pytest.mark.parametrize(
    ("width", "height", "tiles"),
    [(512, 512, 1), (513, 512, 2), (1024, 1024, 4), (1024, 768, 4), (256, 256, 1),
     (1120, 1120, 9), (1920, 1080, 12), (2048, 2048, 16)],
)  # fmt: skip
def test_tiles_are_ceil_w_by_ceil_h(catalog: Catalog, width: int, height: int, tiles: int) -> None:
    assert TILE_SIDE == 512
    # A price of one nano-dollar per tile counts the tiles the code sees.
    assert Price(per_tile=1).image_nano_usd(width, height, 0) == tiles
    # per_tile of phoenix is $0.005830 = 5,830,000 nano; steps 0 isolates the tile term.
    assert catalog.get(PHOENIX).price.image_nano_usd(width, height, 0) == tiles * 5_830_000


def test_costs_are_integers_everywhere(catalog: Catalog) -> None:
    for field in dataclasses.fields(BUILTIN_MODELS[0].price):
        for spec in BUILTIN_MODELS:
            value = getattr(spec.price, field.name)
            assert type(value) is int, (spec.id, field.name)
    for spec in catalog.enabled_image_models():
        cost = spec.default_cost()
        assert type(cost.micro_usd) is int, spec.id
        assert type(cost.milli_neurons) is int, spec.id
        assert cost.micro_usd >= 0
        assert cost.milli_neurons >= 0
        total = cost + cost
        assert type(total.micro_usd) is int
        assert total == Cost(2 * cost.micro_usd, 2 * cost.milli_neurons)


def test_rounding_up_happens_once_per_charge() -> None:
    assert Cost.from_nano_usd(0) == Cost(0, 0)
    assert Cost.from_nano_usd(1) == Cost(1, 1)
    assert Cost.from_nano_usd(1_000) == Cost(1, 91)  # 1000 / 11 = 90.9… → 91
    assert Cost.from_nano_usd(11_000) == Cost(11, 1_000)  # exactly one Neuron


@pytest.mark.parametrize(
    ("micro", "text"),
    [
        (634, "$0.000634"),
        (50_000, "$0.05"),
        (1_000_000, "$1.00"),
        (0, "$0.00"),
        (1, "$0.000001"),
        (1_500_000, "$1.50"),
        (12_345_678, "$12.345678"),
        (-50_000, "-$0.05"),
    ],
)
def test_format_usd(micro: int, text: str) -> None:
    assert format_usd(micro) == text


def test_usd_parsing_is_exact() -> None:
    assert usd_to_micro("0.05") == 50_000
    assert usd_to_micro("1") == 1_000_000
    with pytest.raises(ValueError):
        usd_to_micro("0.0000001")
    with pytest.raises(ValueError):
        usd_to_micro("-1")


# --------------------------------------------------------------------------- limits


def test_every_builtin_image_model_has_sane_limits() -> None:
    image_models = [m for m in BUILTIN_MODELS if not m.is_text_model]
    assert len(image_models) >= 10
    for m in image_models:
        assert 0 < m.min_side <= m.default_width <= m.max_side, m.id
        assert 0 < m.min_side <= m.default_height <= m.max_side, m.id
        assert 1 <= m.min_steps <= m.default_steps <= m.max_steps, m.id
        assert m.size_multiple > 0, m.id
        assert m.text_to_image or m.image_to_image, m.id
        if m.fixed_size:
            assert m.min_side == m.max_side == m.default_width == m.default_height, m.id
        if m.fixed_steps:
            assert m.min_steps == m.max_steps == m.default_steps, m.id
        if m.guidance is not None:
            low, high, default = m.guidance
            assert low <= default <= high, m.id


def test_catalog_lists_image_models_only(catalog: Catalog) -> None:
    ids = {m.id for m in catalog.enabled_image_models()}
    assert SCHNELL in ids
    assert LLAMA not in ids
    assert all(not m.is_text_model for m in catalog.enabled_image_models())


def test_get_accepts_the_short_name(catalog: Catalog) -> None:
    assert catalog.get("flux-1-schnell").id == SCHNELL
    assert catalog.get("lucid-origin").id == LUCID
    assert catalog.get(SCHNELL).id == SCHNELL
    with pytest.raises(InvalidModel):
        catalog.get("nope")
    with pytest.raises(InvalidModel):
        catalog.get("flux")  # not a whole short name


# --------------------------------------------------------------------------- MODELS_FILE


def test_models_file_overrides_hides_and_adds(tmp_path: Path) -> None:
    path = write_models(
        tmp_path,
        f"""
[[model]]
id = "{LUCID}"
enabled = false

[[model]]
id = "{SDXL}"
price = {{ per_step_neurons = 2.5 }}

[[model]]
id = "{SCHNELL}"
price = {{ per_step_neurons = 10 }}

[[model]]
id = "@cf/vendor/new-model"
name = "New model"
max_steps = 30
price = {{ per_tile_usd = 0.001 }}
""",
    )
    catalog = load_catalog(path)

    # Hidden: not offered, but still known (for history).
    with pytest.raises(InvalidModel):
        catalog.get(LUCID)
    with pytest.raises(InvalidModel):
        catalog.get("lucid-origin")
    hidden = catalog.find(LUCID)
    assert hidden is not None
    assert hidden.enabled is False
    assert hidden.default_cost() == Cost(66_264, 6_024_000)  # price kept
    assert LUCID not in {m.id for m in catalog.enabled_image_models()}

    # SDXL at 20 steps × 2.5 Neurons = 50 Neurons = 550,000 nano → 550 µ$.
    assert catalog.get(SDXL).default_cost() == Cost(550, 50_000)

    # A term overrides only itself: schnell keeps 4.8 per tile. 4 × 4.8 + 4 × 10 = 59.2 N.
    assert catalog.get(SCHNELL).default_cost() == Cost(652, 59_200)

    # Added: defaults for the rest; 1024×1024 = 4 tiles × $0.001 = $0.004.
    new = catalog.get("@cf/vendor/new-model")
    assert new.name == "New model"
    assert new.max_steps == 30
    assert new.text_to_image
    assert new.default_cost().micro_usd == 4_000
    assert catalog.get("new-model").id == "@cf/vendor/new-model"
    assert "@cf/vendor/new-model" in {m.id for m in catalog.enabled_image_models()}

    # Untouched models keep the built-in prices.
    assert catalog.get(PHOENIX).default_cost() == Cost(26_070, 2_370_000)
    # The built-in catalog itself is not modified.
    assert load_catalog(None).get(SCHNELL).default_cost() == Cost(634, 57_600)


@pytest.mark.parametrize(
    ("text", "words"),
    [
        (f'[[model]]\nid = "{SDXL}"\ncolour = "red"\n', ["colour"]),
        (f'[[model]]\nid = "{SDXL}"\nprice = {{ per_banana_usd = 1 }}\n', ["per_banana_usd"]),
        (f'[[model]]\nid = "{SDXL}"\nprice = {{ per_tile = 1 }}\n', ["per_tile"]),
        (f'[[model]]\nid = "{SDXL}"\nprice = {{ per_tile_usd = "lots" }}\n', ["per_tile_usd"]),
        ('[[model]\nid = "x"\n', []),
        ("[[model]]\nname = 'no id'\n", ["id"]),
        ("model = 3\n", []),
    ],
    ids=["unknown-key", "unknown-term", "term-without-unit", "bad-amount", "bad-toml", "no-id",
         "not-tables"],
)  # fmt: skip
def test_bad_models_file_is_a_config_error(tmp_path: Path, text: str, words: list[str]) -> None:
    with pytest.raises(ConfigError) as caught:
        load_catalog(write_models(tmp_path, text))
    assert caught.value.variable == "MODELS_FILE"
    assert caught.value.user_message.startswith("MODELS_FILE")
    for word in words:
        assert word in caught.value.user_message


def test_missing_models_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        load_catalog(tmp_path / "absent.toml")
    assert caught.value.variable == "MODELS_FILE"
    assert "not found" in caught.value.user_message
    assert str(tmp_path) not in caught.value.user_message


@pytest.mark.parametrize(
    ("entry", "complaint"),
    [
        ('max_steps = "ten"', "max_steps: must be a whole number"),
        ("max_steps = 10", "min_steps ≤ default_steps ≤ max_steps"),
        ("enabled = 1", "enabled: must be true or false"),
        ("default_width = 4096", "min_side ≤ default sizes ≤ max_side"),
        ('request_format = "xml"', "request_format: must be json or multipart"),
        ("extra = { a = 1 }", "unknown keys"),
    ],
)
def test_models_file_entries_are_checked(tmp_path, entry, complaint):
    path = tmp_path / "models.toml"
    path.write_text(f'[[model]]\nid = "@cf/vendor/new-model"\n{entry}\n', encoding="utf-8")
    with pytest.raises(ConfigError) as raised:
        load_catalog(path)
    assert raised.value.variable == "MODELS_FILE"
    assert complaint in raised.value.user_message


# --------------------------------------------------------------------------- unpublished prices

UNPUBLISHED = (
    SDXL,
    "@cf/bytedance/stable-diffusion-xl-lightning",
    "@cf/lykon/dreamshaper-8-lcm",
    "@cf/runwayml/stable-diffusion-v1-5-img2img",
)


def test_no_image_model_is_ever_free(catalog: Catalog) -> None:
    for spec in catalog.enabled_image_models():
        assert spec.default_cost().micro_usd > 0, spec.id
        assert spec.image_cost(spec.min_side, spec.min_side, spec.min_steps).micro_usd > 0


def test_unpublished_prices_are_the_operators_default_and_say_so(catalog: Catalog) -> None:
    assert {m.id for m in catalog if not m.price_published} == set(UNPUBLISHED)
    for model in UNPUBLISHED:
        spec = catalog.get(model)
        assert spec.price_source == "default"
        # $0.002 = 2,000,000 nano per image, whatever the size and steps; / 11 = 181,818.1… mN.
        assert spec.image_cost(256, 256, 1) == spec.default_cost() == Cost(2_000, 181_819)
        assert spec.price_note == (
            "Price not published by Cloudflare; charged at the operator's default price per image"
        )
    published = catalog.get(SCHNELL)
    assert (published.price_published, published.price_source, published.price_note) == (
        True, "cloudflare", ""
    )  # fmt: skip


def test_the_default_for_unpublished_prices_is_the_operators(tmp_path: Path) -> None:
    catalog = load_catalog(None, unpublished_nano_usd=usd_to_micro("0.0125") * 1000)
    assert catalog.get(SDXL).default_cost().micro_usd == 12_500
    assert catalog.get(SCHNELL).default_cost() == Cost(634, 57_600)  # published: untouched


def test_an_operator_price_wins_and_is_shown_as_the_operators(tmp_path: Path) -> None:
    path = write_models(
        tmp_path,
        f'[[model]]\nid = "{SDXL}"\nprice = {{ per_image_usd = 0.004 }}\n'
        f'[[model]]\nid = "{PHOENIX}"\nprice = {{ per_step_usd = 0.0002 }}\n',
    )
    catalog = load_catalog(path, unpublished_nano_usd=None)
    sdxl = catalog.get(SDXL)
    assert (sdxl.price_source, sdxl.default_cost().micro_usd) == ("operator", 4_000)
    assert sdxl.price_note == "Price not published by Cloudflare; price set by the operator"
    phoenix = catalog.get(PHOENIX)
    assert phoenix.price_note == "Price set by the operator"
    # 4 × $0.005830 + 25 × $0.0002 = $0.02832
    assert phoenix.default_cost().micro_usd == 28_320


def test_with_the_default_off_unpriced_models_are_hidden_until_priced(tmp_path: Path) -> None:
    catalog = load_catalog(None, unpublished_nano_usd=None)
    for model in UNPUBLISHED:
        with pytest.raises(InvalidModel):
            catalog.get(model)
        assert catalog.find(model) is not None  # still known, for history
    assert SCHNELL in {m.id for m in catalog.enabled_image_models()}
    priced = load_catalog(
        write_models(tmp_path, f'[[model]]\nid = "{SDXL}"\nprice = {{ per_step_neurons = 1 }}\n'),
        unpublished_nano_usd=None,
    )
    assert priced.get(SDXL).default_cost().milli_neurons == 20_000  # 20 steps × 1 Neuron


def test_an_added_model_without_a_price_is_not_free(tmp_path: Path) -> None:
    path = write_models(tmp_path, '[[model]]\nid = "@cf/vendor/unpriced"\n')
    spec = load_catalog(path).get("@cf/vendor/unpriced")
    assert not spec.price_published and spec.price_source == "default"
    assert spec.default_cost().micro_usd == 2_000
    with pytest.raises(ConfigError, match="unknown keys"):
        load_catalog(
            write_models(tmp_path, f'[[model]]\nid = "{SDXL}"\nprice_source = "cloudflare"\n')
        )


# --------------------------------------------------------------------------- the packaged table


def test_the_built_in_table_is_packaged_data() -> None:
    packaged = resources.files("bot").joinpath("models.toml").read_text(encoding="utf-8")
    ids = [entry["id"] for entry in tomllib.loads(packaged)["model"]]
    assert ids == [spec.id for spec in BUILTIN_MODELS]
    project = tomllib.loads((Path(__file__).parent.parent / "pyproject.toml").read_text())
    assert "models.toml" in project["tool"]["setuptools"]["package-data"]["bot"]


def test_the_built_in_table_read_as_a_models_file_is_the_same_catalog(tmp_path: Path) -> None:
    """Same format, same loader: the packaged file as MODELS_FILE changes nothing but who priced."""
    packaged = resources.files("bot").joinpath("models.toml").read_text(encoding="utf-8")
    as_operator = load_catalog(write_models(tmp_path, packaged))
    for built_in in load_catalog(None):
        again = as_operator.find(built_in.id)
        assert again is not None
        if built_in.price_source == "cloudflare":
            assert again == dataclasses.replace(built_in, price_source="operator")
        else:  # unpublished: still unpriced, still the operator's default
            assert again == built_in


def test_an_empty_steps_param_means_no_steps_parameter(tmp_path: Path) -> None:
    path = write_models(tmp_path, f'[[model]]\nid = "{PHOENIX}"\nsteps_param = ""\n')
    assert load_catalog(None).get(PHOENIX).steps_param == "num_steps"
    assert load_catalog(path).get(PHOENIX).steps_param is None
