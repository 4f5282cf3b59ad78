"""Image handling with Pillow: sniffing, upload validation, variants and the local preview renderer.

Everything here is synchronous and CPU-bound; async callers run it through ``asyncio.to_thread``.
Untrusted bytes are only ever judged by their content (magic bytes and headers), never by a name.
One module a concern: formats, uploads, resize (variants), preview, grid (multi-image results).
"""

from __future__ import annotations

from bot.imaging.formats import (
    CONTENT_TYPES,
    FITS,
    ImageInfo,
    image_size,
    probe,
    sniff_format,
)
from bot.imaging.grid import (
    CELL_SIDE,
    GRID_MAX_BYTES,
    Grid,
    compose_grid,
    grid_shape,
)
from bot.imaging.preview import (
    render_preview,
    render_preview_from,
)
from bot.imaging.resize import (
    DEFAULT_BOUNDS,
    Variant,
    VariantBounds,
    parse_variant,
    render_variant,
)
from bot.imaging.uploads import (
    validate_upload,
)

__all__ = [
    "CELL_SIDE",
    "CONTENT_TYPES",
    "DEFAULT_BOUNDS",
    "FITS",
    "GRID_MAX_BYTES",
    "Grid",
    "ImageInfo",
    "Variant",
    "VariantBounds",
    "compose_grid",
    "grid_shape",
    "image_size",
    "parse_variant",
    "probe",
    "render_preview",
    "render_preview_from",
    "render_variant",
    "sniff_format",
    "validate_upload",
]
