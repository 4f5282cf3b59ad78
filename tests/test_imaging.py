"""Tests for bot.imaging: sniffing, upload validation, variants and the local preview renderer."""

from __future__ import annotations

import io
import struct
import warnings
import zlib

import pytest
from PIL import Image

from bot import imaging
from bot.errors import InvalidImage, InvalidRequest
from bot.imaging import (
    Variant,
    image_size,
    parse_variant,
    probe,
    render_preview,
    render_preview_from,
    render_variant,
    sniff_format,
    validate_upload,
)

# --------------------------------------------------------------------------- helpers


def encode(img: Image.Image, fmt: str, **params: object) -> bytes:
    buffer = io.BytesIO()
    img.save(buffer, fmt, **params)
    return buffer.getvalue()


def make_image(width: int = 40, height: int = 30, fmt: str = "PNG", mode: str = "RGB") -> bytes:
    img = Image.new(mode, (width, height), "red" if mode != "RGBA" else (255, 0, 0, 128))
    # A little structure so resizes and crops have something to work on.
    for x in range(0, width, 4):
        img.putpixel((x, height // 2), (0, 0, 255) if mode == "RGB" else (0, 0, 255, 255))
    return encode(img, fmt)


def make_gif(frames: int = 3, size: tuple[int, int] = (20, 16)) -> bytes:
    # Distinct colours: Pillow merges identical consecutive frames when saving.
    images = [Image.new("RGB", size, (index * 40 % 256, 255 - index, 0)) for index in range(frames)]
    return encode(images[0], "GIF", save_all=True, append_images=images[1:], duration=50)


def png_chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def crafted_png(width: int, height: int) -> bytes:
    """A PNG whose IHDR claims width×height, with valid CRCs but only a token of pixel data."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 64)
    return (
        b"\x89PNG\r\n\x1a\n"
        + png_chunk(b"IHDR", ihdr)
        + png_chunk(b"IDAT", idat)
        + png_chunk(b"IEND", b"")
    )


def problem_of(data: bytes, **limits: int) -> str:
    with pytest.raises(InvalidImage) as caught:
        validate_upload(data, **limits)
    return caught.value.problem


def pixel(img: Image.Image, xy: tuple[int, int]) -> tuple[int, ...]:
    value = img.getpixel(xy)
    assert isinstance(value, tuple)
    return value


def opened(data: bytes) -> Image.Image:
    img = Image.open(io.BytesIO(data))
    img.load()
    return img


SVG = b'<?xml version="1.0"?>\n<svg xmlns="http://www.w3.org/2000/svg" width="10" height="10"/>'


# --------------------------------------------------------------------------- sniffing & probing


@pytest.mark.parametrize(
    ("fmt", "expected"), [("PNG", "png"), ("JPEG", "jpeg"), ("WEBP", "webp"), ("GIF", "gif")]
)
def test_sniff_format_recognises_each_format(fmt: str, expected: str) -> None:
    assert sniff_format(make_image(fmt=fmt)) == expected


@pytest.mark.parametrize(
    "data",
    [
        b"",
        SVG,
        b"<svg></svg>",
        b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00",
        b"BM" + b"\x00" * 40,
        b"hello, this is not an image at all",
        b"RIFF\x00\x00\x00\x00WAVEfmt ",
    ],
)
def test_sniff_format_rejects_everything_else(data: bytes) -> None:
    assert sniff_format(data) is None


def test_sniff_ignores_what_follows_magic_bytes_only_for_format_name() -> None:
    # A PNG signature is a PNG by sniffing; whether it decodes is validate_upload's business.
    assert sniff_format(b"\x89PNG\r\n\x1a\n" + b"garbage") == "png"


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "WEBP", "GIF"])
def test_probe_reads_header_dimensions(fmt: str) -> None:
    info = probe(make_image(37, 23, fmt))
    assert (info.width, info.height) == (37, 23)
    assert info.content_type == imaging.CONTENT_TYPES[info.format]
    assert not info.animated
    assert info.frames == 1


def test_probe_does_not_decode_so_a_bomb_header_is_just_described() -> None:
    info = probe(crafted_png(30_000, 30_000))
    assert (info.width, info.height) == (30_000, 30_000)


def test_probe_counts_animation_frames() -> None:
    info = probe(make_gif(frames=4))
    assert info.animated
    assert info.frames == 4


def test_probe_refuses_non_images() -> None:
    with pytest.raises(InvalidImage) as caught:
        probe(b"not an image")
    assert caught.value.problem == "unsupported_type"


def test_image_size_from_header() -> None:
    assert image_size(make_image(51, 17, "JPEG")) == (51, 17)
    assert image_size(crafted_png(20_000, 10)) == (20_000, 10)


# --------------------------------------------------------------------------- validate_upload


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "WEBP"])
def test_validate_upload_accepts_small_valid_images(fmt: str) -> None:
    info = validate_upload(make_image(64, 48, fmt))
    assert info.format == fmt.lower()
    assert info.content_type == f"image/{fmt.lower()}"
    assert (info.width, info.height) == (64, 48)
    assert (info.animated, info.frames) == (False, 1)


def test_validate_upload_accepts_animated_gif_and_counts_frames() -> None:
    info = validate_upload(make_gif(frames=5, size=(20, 16)))
    assert info.format == "gif"
    assert info.content_type == "image/gif"
    assert (info.width, info.height) == (20, 16)
    assert info.animated
    assert info.frames == 5


def test_validate_upload_accepts_animated_webp() -> None:
    frames = [Image.new("RGB", (24, 24), color) for color in ("red", "green", "blue")]
    data = encode(frames[0], "WEBP", save_all=True, append_images=frames[1:], duration=50)
    info = validate_upload(data)
    assert (info.format, info.animated, info.frames) == ("webp", True, 3)


def test_empty() -> None:
    with pytest.raises(InvalidImage) as caught:
        validate_upload(b"")
    assert caught.value.problem == "empty"
    assert caught.value.field == "image"


def test_too_large_names_size_and_limit() -> None:
    data = make_image(64, 64)
    with pytest.raises(InvalidImage) as caught:
        validate_upload(data, max_bytes=len(data) - 1)
    assert caught.value.problem == "too_large"
    assert "limit" in str(caught.value)


def test_too_large_message_in_megabytes() -> None:
    data = b"\x89PNG\r\n\x1a\n" + b"\x00" * (3 * 1024 * 1024)
    with pytest.raises(InvalidImage) as caught:
        validate_upload(data, max_bytes=2 * 1024 * 1024)
    assert caught.value.problem == "too_large"
    assert "3.01 MB" in str(caught.value)
    assert "2 MB" in str(caught.value)


def test_size_limit_is_checked_before_anything_else() -> None:
    # Garbage that is too big is refused for its size, without reading it.
    assert problem_of(b"x" * 100, max_bytes=10) == "too_large"


def test_unsupported_type_lists_accepted_types() -> None:
    with pytest.raises(InvalidImage) as caught:
        validate_upload(b"GIF88a this is not really anything")
    assert caught.value.problem == "unsupported_type"
    for name in ("PNG", "JPEG", "WebP", "GIF"):
        assert name in str(caught.value)


def test_svg_is_named_as_unsupported() -> None:
    for data in (SVG, b"\xef\xbb\xbf  <svg viewBox='0 0 1 1'></svg>"):
        with pytest.raises(InvalidImage) as caught:
            validate_upload(data)
        assert caught.value.problem == "unsupported_type"
        assert "SVG" in str(caught.value)


@pytest.mark.parametrize("fmt", ["BMP", "TIFF"])
def test_other_pillow_formats_are_unsupported(fmt: str) -> None:
    assert problem_of(make_image(fmt=fmt)) == "unsupported_type"


def test_too_wide_from_crafted_header() -> None:
    data = crafted_png(20_000, 10)
    with pytest.raises(InvalidImage) as caught:
        validate_upload(data)
    assert caught.value.problem == "too_wide"
    assert "12000" in str(caught.value)


def test_too_tall_is_also_too_wide() -> None:
    assert problem_of(crafted_png(10, 12_001)) == "too_wide"


def test_too_many_pixels_from_header() -> None:
    assert problem_of(crafted_png(11_000, 11_000)) == "too_many_pixels"
    assert problem_of(make_image(100, 100), max_pixels=9_999) == "too_many_pixels"


def test_decompression_bomb_header_refused_before_decoding(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_decoding(*args: object, **kwargs: object) -> None:
        raise AssertionError("a bomb must be refused from its header, before Pillow opens it")

    monkeypatch.setattr(imaging.uploads, "_open", no_decoding)
    assert problem_of(crafted_png(30_000, 30_000)) == "too_wide"
    assert problem_of(crafted_png(30_000, 30_000), max_side=100_000) == "too_many_pixels"


def test_pillow_bomb_limit_never_warns(monkeypatch: pytest.MonkeyPatch) -> None:
    # With Pillow's own threshold below ours, we refuse cleanly instead of letting Pillow warn.
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1_000)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert problem_of(make_image(40, 40), max_pixels=10_000) == "too_many_pixels"


def test_pillow_decompression_bomb_error_becomes_invalid_image(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def bomb(size: tuple[int, int], *, error_only: bool = False) -> None:
        raise Image.DecompressionBombError("bomb")

    monkeypatch.setattr(Image, "_decompression_bomb_check", bomb)
    assert problem_of(make_image(40, 40)) == "too_many_pixels"


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "WEBP", "GIF"])
def test_truncated_image_is_corrupt(fmt: str) -> None:
    img = Image.effect_noise((128, 128), 64).convert("RGB" if fmt != "GIF" else "P")
    data = encode(img, fmt)
    with pytest.raises(InvalidImage) as caught:
        validate_upload(data[: len(data) // 2])
    assert caught.value.problem == "corrupt"
    assert "corrupt" in str(caught.value)


def test_truncated_header_is_corrupt() -> None:
    assert problem_of(make_image()[:20]) == "corrupt"
    assert problem_of(b"\xff\xd8\xff\xe0\x00\x10JFIF") == "corrupt"


def test_corrupt_pixel_data_is_corrupt() -> None:
    # A well-formed header around pixel data that does not decompress.
    data = crafted_png(64, 64)
    assert problem_of(data) == "corrupt"


def two_colour_gif(frames: int, side: int) -> bytes:
    """A real animated GIF, cheap to encode at any size: palette frames, alternating colours
    (Pillow merges identical consecutive frames)."""
    images = []
    for index in range(frames):
        frame = Image.new("P", (side, side), index % 2)
        frame.putpalette([255, 0, 0, 0, 0, 255] + [0] * 762)
        images.append(frame)
    out = io.BytesIO()
    images[0].save(out, format="GIF", save_all=True, append_images=images[1:], duration=50)
    return out.getvalue()


def test_animation_over_100_megapixels_over_all_frames_is_refused() -> None:
    # 26 frames of 2000×2000 = 104 MP: every frame is small, all of them together are not.
    with pytest.raises(InvalidImage) as caught:
        validate_upload(two_colour_gif(26, 2000))
    assert caught.value.problem == "animation_too_many_pixels"
    assert "26 frames of 2000×2000, 104 megapixels over all frames" in caught.value.user_message
    assert "the limit is 100 megapixels over all frames together" in caught.value.user_message


def test_animation_limit_counts_every_frame_gif_and_webp() -> None:
    # 5 frames × 400 pixels = 2,000 pixels: exactly the limit is accepted, one frame more is not.
    assert validate_upload(make_gif(frames=5, size=(20, 20)), max_pixels=2_000).frames == 5
    assert problem_of(make_gif(frames=6, size=(20, 20)), max_pixels=2_000) == (
        "animation_too_many_pixels"
    )
    frames = [Image.new("RGB", (20, 20), colour) for colour in ("red", "green", "blue", "white")]
    webp = encode(frames[0], "WEBP", save_all=True, append_images=frames[1:], duration=50)
    assert validate_upload(webp, max_pixels=1_600).frames == 4
    assert problem_of(webp, max_pixels=1_599) == "animation_too_many_pixels"
    # A still image is only held to the per-image limit.
    assert validate_upload(encode(frames[0], "PNG"), max_pixels=400).frames == 1


def test_too_many_frames_by_count(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(imaging.uploads, "MAX_FRAMES", 2)
    assert problem_of(make_gif(frames=3)) == "too_many_frames"


# --------------------------------------------------------------------------- parse_variant


def test_parse_public() -> None:
    variant = parse_variant("public")
    assert variant.name == "public"
    assert (variant.width, variant.height) == (None, None)
    assert parse_variant(" Public ").name == "public"


@pytest.mark.parametrize(
    ("text", "name", "width", "height", "fit"),
    [
        ("w=512", "w=512,fit=scale-down", 512, None, "scale-down"),
        ("h=300", "h=300,fit=scale-down", None, 300, "scale-down"),
        ("w=512,h=256,fit=cover", "w=512,h=256,fit=cover", 512, 256, "cover"),
        ("fit=cover,height=256,width=512", "w=512,h=256,fit=cover", 512, 256, "cover"),
        (" W = 0512 , h=256 , FIT=pad ", "w=512,h=256,fit=pad", 512, 256, "pad"),
        ("w=4096,h=1,fit=crop", "w=4096,h=1,fit=crop", 4096, 1, "crop"),
        ("width=10,fit=contain", "w=10,fit=contain", 10, None, "contain"),
    ],
)
def test_parse_variant_valid(
    text: str, name: str, width: int | None, height: int | None, fit: str
) -> None:
    assert parse_variant(text) == Variant(name, width, height, fit)


def test_equal_variants_share_a_canonical_name() -> None:
    names = {parse_variant(t).name for t in ("w=64,h=32", "h=32,w=64", "height=32,width=64")}
    assert names == {"w=64,h=32,fit=scale-down"}


@pytest.mark.parametrize(
    "text",
    [
        "",
        "   ",
        "fit=cover",
        "w=0",
        "w=4097",
        "w=-5",
        "w=1.5",
        "w=abc",
        "w=",
        "w=10,w=20",
        "w=10,width=20",
        "w=10,q=80",
        "w=10,fit=stretch",
        "w=10,",
        "w=10;h=10",
        "w 10",
        "publicx",
        "w=" + "1" * 199,
        "w=10," + "fit=cover," * 30,
    ],
)
def test_parse_variant_invalid(text: str) -> None:
    with pytest.raises(InvalidRequest) as caught:
        parse_variant(text)
    assert caught.value.field == "variant"
    assert str(caught.value)


def test_parse_variant_respects_max_side() -> None:
    assert parse_variant("w=100", max_side=100).width == 100
    with pytest.raises(InvalidRequest):
        parse_variant("w=101", max_side=100)


# --------------------------------------------------------------------------- render_variant


def test_public_variant_returns_input_unchanged() -> None:
    data = make_image(fmt="WEBP")
    assert render_variant(data, parse_variant("public")) == (data, "image/webp")


@pytest.mark.parametrize(
    ("text", "source", "expected"),
    [
        ("w=40,h=40,fit=scale-down", (200, 100), (40, 20)),
        ("w=400,h=400,fit=scale-down", (200, 100), (200, 100)),  # never enlarges
        ("w=50,fit=scale-down", (200, 100), (50, 25)),
        ("h=50,fit=scale-down", (200, 100), (100, 50)),
        ("w=40,h=40,fit=contain", (200, 100), (40, 20)),
        ("w=400,h=400,fit=contain", (200, 100), (400, 200)),  # may enlarge
        ("w=40,h=40,fit=cover", (200, 100), (40, 40)),
        ("w=400,h=300,fit=cover", (200, 100), (400, 300)),  # exactly W×H even upscaled
        ("w=50,fit=cover", (200, 100), (50, 25)),  # one side: like contain
        ("w=40,h=40,fit=crop", (200, 100), (40, 40)),  # larger source: like cover
        ("w=400,h=300,fit=crop", (200, 100), (200, 100)),  # never enlarges
        ("w=150,h=300,fit=crop", (200, 100), (150, 100)),  # trims only what overflows
        ("w=40,h=40,fit=pad", (200, 100), (40, 40)),
        ("w=400,h=300,fit=pad", (200, 100), (400, 300)),
    ],
)
def test_render_variant_dimensions(
    text: str, source: tuple[int, int], expected: tuple[int, int]
) -> None:
    data, content_type = render_variant(make_image(*source), parse_variant(text))
    assert content_type == "image/png"
    assert opened(data).size == expected


def test_cover_crops_the_centre() -> None:
    img = Image.new("RGB", (300, 100), "blue")
    img.paste((255, 0, 0), (100, 0, 200, 100))  # red centre third
    data, _ = render_variant(encode(img, "PNG"), parse_variant("w=50,h=50,fit=cover"))
    result = opened(data).convert("RGB")
    assert result.size == (50, 50)
    for x in (0, 25, 49):  # red across the whole width: the blue sides were cropped away
        r, _, b = pixel(result, (x, 25))
        assert r > 200 and b < 60


def test_pad_is_transparent_for_png_and_white_for_jpeg() -> None:
    variant = parse_variant("w=100,h=100,fit=pad")
    png, png_type = render_variant(make_image(200, 100, "PNG"), variant)
    padded = opened(png)
    assert png_type == "image/png"
    assert padded.mode == "RGBA"
    assert padded.getpixel((50, 2)) == (0, 0, 0, 0)
    assert pixel(padded, (50, 50))[3] == 255

    jpeg, jpeg_type = render_variant(make_image(200, 100, "JPEG"), variant)
    flat = opened(jpeg).convert("RGB")
    assert jpeg_type == "image/jpeg"
    assert flat.size == (100, 100)
    assert min(pixel(flat, (50, 2))) >= 245


@pytest.mark.parametrize(
    ("fmt", "content_type", "pillow_format"),
    [
        ("PNG", "image/png", "PNG"),
        ("JPEG", "image/jpeg", "JPEG"),
        ("WEBP", "image/webp", "WEBP"),
        ("GIF", "image/png", "PNG"),
    ],
)
def test_render_variant_output_format(fmt: str, content_type: str, pillow_format: str) -> None:
    data, got_type = render_variant(make_image(80, 60, fmt), parse_variant("w=40"))
    assert got_type == content_type
    result = opened(data)
    assert result.format == pillow_format
    assert result.size == (40, 30)


def test_animated_gif_variant_is_png_of_first_frame() -> None:
    frames = [Image.new("RGB", (20, 20), color) for color in ("red", "blue")]
    data = encode(frames[0], "GIF", save_all=True, append_images=frames[1:])
    out, content_type = render_variant(data, parse_variant("w=10,h=10,fit=cover"))
    result = opened(out).convert("RGB")
    assert content_type == "image/png"
    assert getattr(result, "n_frames", 1) == 1
    assert result.getpixel((5, 5)) == (255, 0, 0)


def two_colour_palette(side: int, transparent_index: int | None = None) -> bytes:
    """A palette PNG: red on the left half, blue on the right (index 1 maybe transparent)."""
    img = Image.new("P", (side, side), 0)
    img.putpalette([255, 0, 0, 0, 0, 255] + [0] * 762)
    img.paste(1, (side // 2, 0, side, side))
    params = {} if transparent_index is None else {"transparency": transparent_index}
    return encode(img, "PNG", **params)


def close_to(pixel: tuple[int, ...], expected: tuple[int, ...], tolerance: int = 6) -> bool:
    return all(abs(a - b) <= tolerance for a, b in zip(pixel, expected, strict=True))


def test_rgba_and_palette_sources_keep_their_colours_and_transparency() -> None:
    rgba_as_png = make_image(60, 60, "PNG", mode="RGBA")
    out, _ = render_variant(rgba_as_png, parse_variant("w=30"))
    assert opened(out).mode == "RGBA"  # PNG keeps alpha
    # A palette is resized in RGB (not as indices): the colours are the palette's own.
    out, content_type = render_variant(two_colour_palette(60), parse_variant("w=30"))
    img = opened(out)
    assert (content_type, img.mode, img.size) == ("image/png", "RGB", (30, 30))
    assert (img.getpixel((2, 2)), img.getpixel((28, 28))) == ((255, 0, 0), (0, 0, 255))
    # A palette with a transparent colour keeps it transparent.
    out, _ = render_variant(two_colour_palette(60, transparent_index=1), parse_variant("w=30"))
    img = opened(out)
    assert img.mode == "RGBA"
    assert (img.getpixel((2, 2)), img.getpixel((28, 28))[3]) == ((255, 0, 0, 255), 0)


def test_jpeg_output_is_rgb_and_transparency_is_flattened_onto_white() -> None:
    cmyk = encode(Image.new("CMYK", (60, 60), (0, 255, 255, 0)), "JPEG")
    out, content_type = render_variant(cmyk, parse_variant("w=30"))
    img = opened(out)
    assert (content_type, img.format, img.mode) == ("image/jpeg", "JPEG", "RGB")
    assert close_to(img.getpixel((5, 5)), (255, 0, 0))
    # An RGBA or palette starting image becomes RGB on white (strength 0 keeps the image).
    clear = encode(Image.new("RGBA", (64, 64), (255, 0, 0, 0)), "PNG")
    for init, left, right in (
        (clear, (255, 255, 255), (255, 255, 255)),
        (two_colour_palette(64, transparent_index=1), (255, 0, 0), (255, 255, 255)),
    ):
        rendered = render_preview_from(init, "a cat", seed=1, width=64, height=64, strength=0)
        preview = opened(rendered)
        assert preview.mode == "RGB"
        assert (preview.getpixel((5, 5)), preview.getpixel((60, 5))) == (left, right)


def test_jpeg_exif_rotation_is_applied() -> None:
    img = Image.new("RGB", (200, 100), "green")
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° on display
    data = encode(img, "JPEG", exif=exif.tobytes())
    out, _ = render_variant(data, parse_variant("w=50,fit=scale-down"))
    assert opened(out).size == (50, 100)


def test_large_jpeg_downscale_uses_exact_target() -> None:
    data = make_image(1600, 1200, "JPEG")
    out, _ = render_variant(data, parse_variant("w=100,h=100,fit=cover"))
    assert opened(out).size == (100, 100)


def test_render_variant_refuses_non_images() -> None:
    with pytest.raises(InvalidImage):
        render_variant(b"not an image", parse_variant("w=10"))


# --------------------------------------------------------------------------- local preview


def test_render_preview_is_deterministic() -> None:
    first = render_preview("a lighthouse at dusk", seed=42, width=256, height=192)
    second = render_preview("a lighthouse at dusk", seed=42, width=256, height=192)
    assert first == second


def test_render_preview_returns_png_of_requested_size() -> None:
    data = render_preview("a cat", seed=1, width=320, height=200)
    assert sniff_format(data) == "png"
    assert opened(data).size == (320, 200)
    assert opened(render_preview("tiny", seed=1, width=16, height=16)).size == (16, 16)


def _difference(a: bytes, b: bytes) -> float:
    """Mean absolute per-channel difference over the picture (caption band excluded)."""
    first, second = opened(a).convert("RGB"), opened(b).convert("RGB")
    box = (0, 0, first.width, first.height * 3 // 4)
    pixels_a = first.crop(box).tobytes()
    pixels_b = second.crop(box).tobytes()
    return sum(abs(x - y) for x, y in zip(pixels_a, pixels_b, strict=True)) / len(pixels_a)


def test_different_seeds_give_visibly_different_images() -> None:
    a = render_preview("a lighthouse at dusk", seed=1, width=128, height=128)
    b = render_preview("a lighthouse at dusk", seed=2, width=128, height=128)
    assert _difference(a, b) > 10


def test_different_prompts_give_visibly_different_images() -> None:
    a = render_preview("a lighthouse at dusk", seed=7, width=128, height=128)
    b = render_preview("a forest at noon", seed=7, width=128, height=128)
    assert _difference(a, b) > 10


def test_negative_prompt_changes_the_render() -> None:
    a = render_preview("a cat", seed=3, width=128, height=128)
    b = render_preview("a cat", seed=3, width=128, height=128, negative_prompt="dogs")
    assert a != b


def test_caption_band_is_drawn_at_the_bottom_only(monkeypatch: pytest.MonkeyPatch) -> None:
    captioned = opened(render_preview("caption check", seed=5, width=400, height=300))
    monkeypatch.setattr(imaging.preview, "_draw_caption", lambda img, prompt, seed: None)
    bare = opened(render_preview("caption check", seed=5, width=400, height=300))
    top, bottom = (0, 0, 400, 240), (0, 280, 400, 300)
    assert captioned.crop(top).tobytes() == bare.crop(top).tobytes()
    assert captioned.crop(bottom).tobytes() != bare.crop(bottom).tobytes()
    # White text sits on the darkened band.
    assert max(captioned.crop(bottom).convert("L").tobytes()) >= 200


@pytest.mark.parametrize(("width", "height"), [(15, 100), (100, 4097), (0, 0)])
def test_render_preview_refuses_bad_sizes(width: int, height: int) -> None:
    with pytest.raises(InvalidRequest):
        render_preview("x", seed=1, width=width, height=height)


def test_render_preview_from_blends_by_strength() -> None:
    init = make_image(300, 200, "JPEG")
    keep = render_preview_from(init, "blend", seed=9, width=160, height=128, strength=0.0)
    fresh = render_preview_from(init, "blend", seed=9, width=160, height=128, strength=1.0)
    assert opened(keep).size == (160, 128)
    assert opened(fresh).size == (160, 128)
    assert sniff_format(keep) == "png"
    assert _difference(keep, fresh) > 10
    # Strength 0 is the init image (cover-fitted), so it is red like the source.
    r, g, b = pixel(opened(keep).convert("RGB"), (10, 10))
    assert r > 200 and g < 60 and b < 60
    # Strength 1 is the fresh render's picture.
    plain = render_preview("blend", seed=9, width=160, height=128)
    assert _difference(fresh, plain) < 1


def test_render_preview_from_is_deterministic() -> None:
    init = make_image(64, 64, "PNG")
    first = render_preview_from(init, "again", seed=4, width=96, height=64, strength=0.5)
    second = render_preview_from(init, "again", seed=4, width=96, height=64, strength=0.5)
    assert first == second


@pytest.mark.parametrize("strength", [-0.1, 1.5, float("nan")])
def test_render_preview_from_refuses_bad_strength(strength: float) -> None:
    with pytest.raises(InvalidRequest) as caught:
        render_preview_from(make_image(), "x", seed=1, width=64, height=64, strength=strength)
    assert caught.value.field == "strength"


def test_render_preview_from_refuses_bad_init_image() -> None:
    with pytest.raises(InvalidImage):
        render_preview_from(SVG, "x", seed=1, width=64, height=64, strength=0.5)
