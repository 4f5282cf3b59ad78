"""Upload validation on a corpus of good and hostile files: each bad one is a clear error with a
problem code, refused before decoding where the header already says it is too big."""

from __future__ import annotations

import io
import struct
import zlib

import pytest
from PIL import Image

from bot import imaging
from bot.errors import InvalidImage, InvalidRequest


def encode(image: Image.Image, fmt: str, **options: object) -> bytes:
    out = io.BytesIO()
    image.save(out, format=fmt, **options)
    return out.getvalue()


def png_claiming(width: int, height: int) -> bytes:
    """A PNG whose IHDR claims a size, with a valid CRC but (almost) no pixel data."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    chunk = b"IHDR" + ihdr
    body = struct.pack(">I", len(ihdr)) + chunk + struct.pack(">I", zlib.crc32(chunk))
    idat = b"IDAT" + zlib.compress(b"\x00" * 16)
    body += struct.pack(">I", len(idat) - 4) + idat + struct.pack(">I", zlib.crc32(idat))
    return b"\x89PNG\r\n\x1a\n" + body


RGB = Image.new("RGB", (120, 80), "purple")


@pytest.mark.parametrize(
    ("fmt", "content_type"),
    [("PNG", "image/png"), ("JPEG", "image/jpeg"), ("WEBP", "image/webp"), ("GIF", "image/gif")],
)
def test_good_images_are_accepted_with_their_real_size_and_type(fmt, content_type):
    info = imaging.validate_upload(encode(RGB, fmt))
    assert (info.width, info.height, info.content_type) == (120, 80, content_type)


def test_animated_gif_is_accepted_and_its_frames_counted():
    frames = [Image.new("RGB", (20, 20), (50 * i, 0, 0)) for i in range(5)]
    data = encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=50)
    info = imaging.validate_upload(data)
    assert info.animated and info.frames == 5


@pytest.mark.parametrize(
    ("data", "problem"),
    [
        (b"", "empty"),
        (b"hello, I am a text file", "unsupported_type"),
        (
            b"<?xml version='1.0'?><svg xmlns='http://www.w3.org/2000/svg'></svg>",
            "unsupported_type",
        ),
        (b"%PDF-1.7 not an image", "unsupported_type"),
        (encode(RGB, "PNG")[:60], "corrupt"),
        (encode(RGB, "JPEG")[:200], "corrupt"),
        (b"GIF89a" + b"\x00" * 4, "corrupt"),
        (png_claiming(12_001, 10), "too_wide"),
        (png_claiming(30_000, 30_000), "too_wide"),
        (png_claiming(11_000, 10_000), "too_many_pixels"),
        (png_claiming(14_143, 14_143), "too_wide"),  # 200 MP cannot fit under 12,000 px
        (png_claiming(0, 10), "corrupt"),
    ],
    ids=[
        "empty",
        "text",
        "svg",
        "pdf",
        "truncated-png",
        "truncated-jpeg",
        "truncated-gif",
        "12001px-side",
        "bomb-30000",
        "110-megapixels",
        "200-megapixels",
        "zero-size",
    ],
)
def test_bad_files_are_refused_with_a_problem_code(data, problem):
    with pytest.raises(InvalidImage) as refused:
        imaging.validate_upload(data)
    assert refused.value.problem == problem
    assert refused.value.field == "image"
    assert "Traceback" not in refused.value.user_message


def test_svg_is_named_in_the_message():
    with pytest.raises(InvalidImage) as refused:
        imaging.validate_upload(b"<svg xmlns='http://www.w3.org/2000/svg'></svg>")
    assert "SVG" in refused.value.user_message


def test_wrong_extension_does_not_matter_only_bytes_do():
    # A JPEG handed over as if it were a PNG is judged by its magic bytes.
    assert imaging.validate_upload(encode(RGB, "JPEG")).format == "jpeg"


def test_polyglot_with_trailing_payload_is_judged_by_its_image():
    data = encode(RGB, "PNG") + b"PK\x03\x04" + b"zip payload" * 50
    assert imaging.validate_upload(data).format == "png"


def test_size_limit_in_bytes():
    data = encode(Image.effect_noise((400, 400), 64).convert("RGB"), "PNG")
    with pytest.raises(InvalidImage) as refused:
        imaging.validate_upload(data, max_bytes=len(data) - 1)
    assert refused.value.problem == "too_large"
    assert "KB" in refused.value.user_message or "MB" in refused.value.user_message


def test_eleven_megabytes_is_over_the_default_limit():
    with pytest.raises(InvalidImage) as refused:
        imaging.validate_upload(b"\x89PNG\r\n\x1a\n" + b"\x00" * (11 * 1024 * 1024))
    assert refused.value.problem == "too_large"


@pytest.mark.parametrize(
    ("text", "name"),
    [("public", "public"), ("w=400,h=300,fit=cover", "w=400,h=300,fit=cover"),
     ("fit=cover,height=300,width=400", "w=400,h=300,fit=cover"), ("w=64", "w=64,fit=scale-down")],
)  # fmt: skip
def test_variant_names_are_canonical(text, name):
    assert imaging.parse_variant(text).name == name


@pytest.mark.parametrize("text", ["", "w=0", "w=5000", "fit=banana", "w=1,w=2", "foo=1", "w=x",
                                  "../etc", "w=10,h=10," + "x" * 300])  # fmt: skip
def test_bad_variants_are_refused(text):
    with pytest.raises(InvalidRequest):
        imaging.parse_variant(text)


def test_render_variant_fit_modes():
    data = encode(Image.new("RGB", (400, 200), "green"), "PNG")
    cover, kind = imaging.render_variant(data, imaging.parse_variant("w=100,h=100,fit=cover"))
    assert kind == "image/png" and Image.open(io.BytesIO(cover)).size == (100, 100)
    down, _ = imaging.render_variant(data, imaging.parse_variant("w=800,h=800,fit=scale-down"))
    assert Image.open(io.BytesIO(down)).size == (400, 200)  # never enlarged
    pad, _ = imaging.render_variant(data, imaging.parse_variant("w=300,h=300,fit=pad"))
    assert Image.open(io.BytesIO(pad)).size == (300, 300)
    contain, _ = imaging.render_variant(data, imaging.parse_variant("w=800,h=800,fit=contain"))
    assert Image.open(io.BytesIO(contain)).size == (800, 400)


def test_preview_renderer_is_deterministic_and_honours_the_size():
    first = imaging.render_preview("a red fox", seed=7, width=512, height=256)
    assert first == imaging.render_preview("a red fox", seed=7, width=512, height=256)
    assert first != imaging.render_preview("a red fox", seed=8, width=512, height=256)
    assert first != imaging.render_preview("a blue fox", seed=7, width=512, height=256)
    image = Image.open(io.BytesIO(first))
    assert image.format == "PNG" and image.size == (512, 256)
    start = encode(Image.new("RGB", (64, 64), "white"), "PNG")
    kept = imaging.render_preview_from(start, "x y z", seed=1, width=128, height=128, strength=0)
    changed = imaging.render_preview_from(start, "x y z", seed=1, width=128, height=128,
                                          strength=1)  # fmt: skip
    assert kept != changed and Image.open(io.BytesIO(kept)).size == (128, 128)


def test_a_95_megapixel_image_is_accepted_under_the_100_mp_limit():
    data = encode(Image.new("L", (10_000, 9_500), 128), "PNG")  # small file, 95 MP decoded
    info = imaging.validate_upload(data)
    assert (info.width, info.height) == (10_000, 9_500)
