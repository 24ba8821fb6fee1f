"""Heatmap pictures (numpy + Pillow only, shared by ``eval`` and the runtime's ``predict``).

Maps are coloured on one fixed scale per model, 0 to twice the pixel threshold, so colours mean the
same thing in every picture: red is at or above twice the threshold, the threshold itself is yellow.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

# a perceptual-ish blue -> cyan -> yellow -> red ramp (anchor colours, linearly interpolated)
_ANCHORS = np.array([[0, 0, 96], [0, 80, 255], [0, 220, 220], [255, 230, 0], [255, 40, 0]], dtype=np.float64)


def colorize(values01: np.ndarray) -> np.ndarray:
    v = np.clip(values01, 0.0, 1.0) * (len(_ANCHORS) - 1)
    i = np.minimum(v.astype(np.int64), len(_ANCHORS) - 2)
    t = (v - i)[..., None]
    return (_ANCHORS[i] * (1 - t) + _ANCHORS[i + 1] * t).astype(np.uint8)


def overlay(image: np.ndarray, amap: np.ndarray, vmax: float, alpha: float = 0.5) -> np.ndarray:
    heat = colorize(amap / max(vmax, 1e-12))
    return (image.astype(np.float32) * (1 - alpha) + heat.astype(np.float32) * alpha).astype(np.uint8)


def panel(image: np.ndarray, amap: np.ndarray, vmax: float, *, mask: np.ndarray | None = None,
          title: str = "") -> Image.Image:
    """image | ground truth (when known) | heatmap overlay | thresholded outline, side by side."""
    tiles = [image]
    if mask is not None:
        tiles.append(np.repeat((mask.astype(np.uint8) * 255)[..., None], 3, axis=2))
    tiles.append(overlay(image, amap, vmax))
    pred = amap > vmax / 2
    outline = image.copy()
    edge = pred ^ np.roll(pred, 1, 0) | pred ^ np.roll(pred, 1, 1)
    outline[edge] = (255, 0, 0)
    tiles.append(outline)
    h = image.shape[0]
    strip = np.concatenate([t if t.shape[0] == h else np.asarray(Image.fromarray(t).resize((t.shape[1], h)))
                            for t in tiles], axis=1)
    canvas = Image.new("RGB", (strip.shape[1], h + 18), (255, 255, 255))
    canvas.paste(Image.fromarray(strip), (0, 18))
    ImageDraw.Draw(canvas).text((4, 3), title, fill=(0, 0, 0))
    return canvas


def save_panel(path: str | Path, *args, **kwargs) -> None:
    panel(*args, **kwargs).save(path)
