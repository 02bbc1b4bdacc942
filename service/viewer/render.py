"""A study's model-grid slices as one PNG per display window: a sprite sheet of greyscale tiles.

One image per window (rather than one per slice) keeps a study to three requests; PNG is
lossless, so what the viewer shows is exactly the HU the model read, windowed. On the demo grid
(32 x 128 x 128) a window's sheet is about 100 kB.
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass

import numpy as np
from PIL import Image

from service.contract import HUWindow


@dataclass(frozen=True, slots=True)
class SheetLayout:
    """Slice ``i`` (0 inferior) is the tile at row ``i // columns``, column ``i % columns``."""

    slices: int
    height: int
    width: int
    columns: int
    rows: int

    @classmethod
    def for_volume(cls, shape: tuple[int, ...]) -> SheetLayout:
        """A near-square sheet, so neither side grows past what browsers decode for large grids."""
        depth, height, width = shape
        columns = math.ceil(math.sqrt(depth))
        return cls(depth, height, width, columns, math.ceil(depth / columns))


def to_grey(hu: np.ndarray, window: HUWindow) -> np.ndarray:
    """HU in [low, low + width] to 0..255, clipped outside (as the radiologist's window does)."""
    scaled = (hu.astype(np.float32) - window.low) * (255.0 / window.width)
    grey: np.ndarray = np.clip(np.rint(scaled), 0, 255).astype(np.uint8)
    return grey


def render_sheet(hu: np.ndarray, window: HUWindow) -> bytes:
    """The PNG sheet of every slice of ``hu`` ([D, H, W], slice 0 inferior) under ``window``;
    tiles past the last slice are black."""
    layout = SheetLayout.for_volume(hu.shape)
    grey = to_grey(hu, window)
    padded = np.zeros((layout.rows * layout.columns, layout.height, layout.width), np.uint8)
    padded[: layout.slices] = grey
    sheet = (
        padded.reshape(layout.rows, layout.columns, layout.height, layout.width)
        .transpose(0, 2, 1, 3)
        .reshape(layout.rows * layout.height, layout.columns * layout.width)
    )
    buffer = io.BytesIO()
    Image.fromarray(sheet).save(buffer, format="PNG")  # 2-D uint8: greyscale ("L")
    return buffer.getvalue()
