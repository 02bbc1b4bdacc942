"""The key image's picture: the key slice in a brain window, with what a reader needs burned in.

The model's attention is one weight per slice of its grid, not a map over the pixels, so the
picture shows it as what it is: a strip with one cell per grid slice (superior at the top), the
key slice's cell outlined, beside the image, and no colour laid over the anatomy (a heat map
would point at places the model never singled out). Text uses Pillow's bundled font, in ASCII
(its glyph set has no dashes or comparison signs), so the image looks the same on every machine.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from service.contract import HUWindow

BRAIN_WINDOW = HUWindow(name="brain", center=40.0, width=80.0)
IMAGE_SIDE_PX = 512  # the key slice is scaled to fit this square (most CT is 512 already)
STRIP_WIDTH_PX = 150
MARGIN_PX = 10
LINE_PX = 22
PRIORITY_COLOURS = {"critical": (200, 30, 30), "urgent": (230, 140, 0), "routine": (60, 120, 60)}
WARNING_COLOUR = (200, 30, 30)
TEXT_COLOUR = (235, 235, 235)
MUTED_COLOUR = (170, 170, 170)
ATTENTION_COLOUR = np.array([255, 200, 40], dtype=np.float64)  # amber: the strip, never the image


@dataclass(frozen=True)
class KeyImageText:
    """What is written on the key image, top to bottom."""

    priority: str  # critical, urgent or routine
    model: str  # name and version of the model
    caption: str  # under the image: which slice and which window
    findings: Sequence[str]  # one line per finding shown
    warning: str | None  # a red banner at the bottom (the not-for-clinical-use notice)


def window(hu: np.ndarray, hu_window: HUWindow = BRAIN_WINDOW) -> np.ndarray:
    """HU to 8-bit grey: the window's range onto 0..255, clipped outside it."""
    scaled = (hu.astype(np.float64) - hu_window.low) / hu_window.width
    return np.asarray(np.clip(np.rint(scaled * 255.0), 0, 255), dtype=np.uint8)


def _fitted(grey: np.ndarray) -> Image.Image:
    image = Image.fromarray(grey, mode="L")
    scale = IMAGE_SIDE_PX / max(image.size)
    size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
    return image.resize(size, Image.Resampling.BILINEAR).convert("RGB")


def _attention_strip(
    draw: ImageDraw.ImageDraw, box: tuple[int, int, int, int], attention: Sequence[float], key: int
) -> None:
    """One cell per grid slice, slice 0 (inferior) at the bottom; brighter is more attention,
    relative to the study's largest weight."""
    left, top, right, bottom = box
    weights = np.asarray(attention, dtype=np.float64)
    relative = weights / weights.max() if weights.size and weights.max() > 0 else weights
    cell = (bottom - top) / max(1, weights.size)
    for index, value in enumerate(relative):
        y1 = bottom - index * cell
        y0 = y1 - cell
        colour = tuple(int(c) for c in np.rint(ATTENTION_COLOUR * (0.15 + 0.85 * value)))
        draw.rectangle((left, round(y0), right, round(y1)), fill=colour)
    y1 = bottom - key * cell
    draw.rectangle(
        (left - 4, round(y1 - cell) - 2, right + 4, round(y1) + 2), outline="white", width=2
    )


def render_key_image(
    hu: np.ndarray, attention: Sequence[float], key_slice: int, text: KeyImageText
) -> np.ndarray:
    """The annotated key image as RGB pixels, [rows, columns, 3] uint8."""
    font = ImageFont.load_default(size=16)
    title_font = ImageFont.load_default(size=22)
    picture = _fitted(window(hu))
    header = LINE_PX * 2 + MARGIN_PX
    footer = LINE_PX * (len(text.findings) + 2) + (LINE_PX + MARGIN_PX if text.warning else 0)
    width = MARGIN_PX * 3 + IMAGE_SIDE_PX + STRIP_WIDTH_PX
    height = header + IMAGE_SIDE_PX + footer + MARGIN_PX
    canvas = Image.new("RGB", (width, height), (0, 0, 0))
    draw = ImageDraw.Draw(canvas)

    colour = PRIORITY_COLOURS.get(text.priority, MUTED_COLOUR)
    draw.rectangle((0, 0, width, header - MARGIN_PX // 2), fill=colour)
    draw.text((MARGIN_PX, 6), f"AI TRIAGE: {text.priority.upper()}", font=title_font, fill="white")
    draw.text((MARGIN_PX, 6 + LINE_PX + 4), text.model, font=font, fill="white")

    image_top = header
    canvas.paste(picture, (MARGIN_PX, image_top))
    label_left = MARGIN_PX * 2 + IMAGE_SIDE_PX
    strip_left, strip_right = label_left + 50, label_left + 90
    strip_top, strip_bottom = image_top + 2 * LINE_PX + 8, image_top + IMAGE_SIDE_PX
    draw.text((label_left, image_top), "attention", font=font, fill=TEXT_COLOUR)
    draw.text((label_left, image_top + LINE_PX - 4), "per slice", font=font, fill=TEXT_COLOUR)
    _attention_strip(draw, (strip_left, strip_top, strip_right, strip_bottom), attention, key_slice)
    draw.text((label_left, strip_top), "sup", font=font, fill=MUTED_COLOUR)
    draw.text((label_left, strip_bottom - LINE_PX + 4), "inf", font=font, fill=MUTED_COLOUR)

    y = image_top + IMAGE_SIDE_PX + 4
    draw.text((MARGIN_PX, y), text.caption, font=font, fill=MUTED_COLOUR)
    y += LINE_PX
    for line in text.findings:
        draw.text((MARGIN_PX, y), line, font=font, fill=TEXT_COLOUR)
        y += LINE_PX
    if text.warning:
        y += LINE_PX // 2
        draw.rectangle((0, y, width, height), fill=WARNING_COLOUR)
        draw.text((MARGIN_PX, y + 3), text.warning, font=font, fill="white")
    return np.asarray(canvas, dtype=np.uint8)
