"""Detections drawn on their image with Pillow: a box and "label score" per detection.

Boxes are (ymin, xmin, ymax, xmax) fractions of the whole image (a detector's preprocess
stretches the image to its input, so the fractions hold for the original)."""

from __future__ import annotations

import io
from collections.abc import Sequence

__all__ = ["draw_detections", "COLORS"]

COLORS = ("#e6194b", "#3cb44b", "#4363d8", "#f58231", "#911eb4", "#42d4f4", "#f032e6", "#bfef45",
          "#fabed4", "#469990", "#dcbeff", "#9a6324", "#800000", "#aaffc3", "#808000", "#000075")


def draw_detections(image: bytes, detections: Sequence, width: int | None = None):
    """A PIL RGB image: `image` (encoded bytes) with each detection drawn.  A detection has
    ``label``, ``score``, ``class_id`` and ``box`` (ymin, xmin, ymax, xmax in [0, 1])."""
    from PIL import Image, ImageDraw, ImageFont

    with Image.open(io.BytesIO(bytes(image))) as img:
        canvas = img.convert("RGB")
    w, h = canvas.size
    line = width or max(1, round(min(w, h) / 150))
    draw = ImageDraw.Draw(canvas)
    font = ImageFont.load_default()
    for det in detections:
        ymin, xmin, ymax, xmax = det.box
        x0, y0, x1, y1 = xmin * (w - 1), ymin * (h - 1), xmax * (w - 1), ymax * (h - 1)
        color = COLORS[int(det.class_id) % len(COLORS)]
        draw.rectangle((x0, y0, x1, y1), outline=color, width=line)
        text = f"{det.label} {det.score:.2f}"
        left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
        ty = y0 - (bottom - top) - 2 if y0 - (bottom - top) - 2 >= 0 else y0
        draw.rectangle((x0, ty, x0 + right - left + 4, ty + bottom - top + 2), fill=color)
        draw.text((x0 + 2, ty - top + 1), text, fill="white", font=font)
    return canvas
