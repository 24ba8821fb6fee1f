"""Heatmap pictures (numpy + Pillow only, shared by ``eval`` and the runtime's ``predict``).

Maps are coloured on one fixed scale per model, 0 to twice the pixel threshold, so colours mean the
same thing in every picture: red is at or above twice the threshold, the threshold itself is yellow.
Every panel draws that scale under its heatmap and labels its columns.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

# a perceptual-ish blue -> cyan -> yellow -> red ramp (anchor colours, linearly interpolated)
_ANCHORS = np.array([[0, 0, 96], [0, 80, 255], [0, 220, 220], [255, 230, 0], [255, 40, 0]], dtype=np.float64)


def _ramp(n: int = 1024) -> np.ndarray:
    v = np.linspace(0.0, 1.0, n) * (len(_ANCHORS) - 1)
    i = np.minimum(v.astype(np.int64), len(_ANCHORS) - 2)
    t = (v - i)[..., None]
    return (_ANCHORS[i] * (1 - t) + _ANCHORS[i + 1] * t).astype(np.uint8)


_LUT = _ramp()  # 1024 colours: finer than the eye tells apart, and a lookup instead of per-pixel arithmetic


def colorize(values01: np.ndarray) -> np.ndarray:
    """Values in [0, 1] (clipped) -> RGB uint8 on the ramp."""
    idx = np.clip(np.asarray(values01, dtype=np.float32) * (len(_LUT) - 1) + 0.5, 0, len(_LUT) - 1)
    return _LUT[idx.astype(np.intp)]


def overlay(image: np.ndarray, amap: np.ndarray, vmax: float, alpha: float = 0.5) -> np.ndarray:
    heat = colorize(amap / np.float32(max(vmax, 1e-12)))
    a = int(round(alpha * 256))
    return ((image.astype(np.uint16) * (256 - a) + heat.astype(np.uint16) * a) >> 8).astype(np.uint8)


def outline_of(region: np.ndarray) -> np.ndarray:
    """The pixels of ``region`` (bool HxW) on its border with pixels outside it; the picture's own edge is
    not a border (no wrap-around: a region touching the bottom edge draws nothing on the top row)."""
    padded = np.pad(region, 1, mode="edge")
    inside = padded[:-2, 1:-1] & padded[2:, 1:-1] & padded[1:-1, :-2] & padded[1:-1, 2:]
    return region & ~inside


LABEL_H, TITLE_H, SCALE_H = 14, 18, 26


def panel(image: np.ndarray, amap: np.ndarray, vmax: float, *, mask: np.ndarray | None = None,
          title: str = "", anomalous: bool | None = None) -> Image.Image:
    """image | ground truth (when known) | heatmap overlay | outline, side by side, each column labelled, with
    the heatmap's colour scale (0, the pixel threshold, twice it) under it. The outline marks the pixels
    above the pixel threshold of a part judged anomalous (``anomalous`` True or None); a part judged good
    gets none, so red always means a reject."""
    tiles, labels = [image], ["picture"]
    if mask is not None:
        tiles.append(np.repeat((mask.astype(np.uint8) * 255)[..., None], 3, axis=2))
        labels.append("ground truth")
    tiles.append(overlay(image, amap, vmax))
    labels.append("heatmap")
    outline = image.copy()
    if anomalous is not False:
        outline[outline_of(amap > vmax / 2)] = (255, 0, 0)
        labels.append("anomalous pixels (red)")
    else:
        labels.append("judged good: nothing outlined")
    tiles.append(outline)
    h = image.shape[0]
    strip = np.concatenate([t if t.shape[0] == h else np.asarray(Image.fromarray(t).resize((t.shape[1], h)))
                            for t in tiles], axis=1)
    canvas = _frame(h, tuple(t.shape[1] for t in tiles), tuple(labels), float(vmax)).copy()
    canvas.paste(Image.fromarray(strip), (0, TITLE_H + LABEL_H))
    if title:
        ImageDraw.Draw(canvas).text((4, 3), title, fill=(0, 0, 0))
    return canvas


@lru_cache(maxsize=16)
def _frame(h: int, widths: tuple[int, ...], labels: tuple[str, ...], vmax: float) -> Image.Image:
    """A panel without its pictures and title: the columns' labels and the colour scale, the same for every
    picture of one size and model, so it is drawn once (text is most of a panel's drawing time)."""
    top = TITLE_H + LABEL_H
    canvas = Image.new("RGB", (sum(widths), top + h + SCALE_H), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    x = 0
    for w, label in zip(widths, labels):
        draw.text((x + 4, TITLE_H), label, fill=(60, 60, 60))
        x += w
    heat_x, heat_w = sum(widths[:-2]), widths[-2]
    _colour_scale(canvas, draw, heat_x + 4, top + h + 3, max(heat_w - 8, 16), vmax / 2)
    return canvas


def _colour_scale(canvas: Image.Image, draw: ImageDraw.ImageDraw, x: int, y: int, width: int,
                  threshold: float) -> None:
    """The heatmap's colours from 0 to twice the pixel threshold, the threshold marked."""
    bar = colorize(np.linspace(0.0, 1.0, width, dtype=np.float32))[None].repeat(6, axis=0)
    canvas.paste(Image.fromarray(bar), (x, y))
    draw.line([(x + width // 2, y - 1), (x + width // 2, y + 7)], fill=(0, 0, 0))
    for frac, text in ((0.0, "0"), (0.5, f"{threshold:.4g} (threshold)"), (1.0, f"{2 * threshold:.4g}")):
        tx = x + int(frac * width) - (0 if frac == 0 else len(text) * 6 if frac == 1 else len(text) * 3)
        draw.text((max(x, tx), y + 8), text, fill=(0, 0, 0))


def picture_title(path: str | Path, score: float, threshold: float | None = None, anomalous: bool | None = None) -> str:
    """``folder/name  score 36526.8 (threshold 6038.11): anomalous``: scores as the terminal prints them."""
    path = Path(path)
    verdict = "" if anomalous is None else f": {'anomalous' if anomalous else 'good'}"
    limit = "" if threshold is None else f" (threshold {threshold:.6g})"
    return f"{path.parent.name}/{path.name}  score {score:.6g}{limit}{verdict}"


def save_panel(path: str | Path, *args, **kwargs) -> None:
    """The panel as a PNG, or a JPEG (quality 90) when ``path`` ends in .jpg/.jpeg."""
    jpeg = Path(path).suffix.lower() in (".jpg", ".jpeg")
    panel(*args, **kwargs).save(path, **({"quality": 90} if jpeg else {}))


OVERLAY_SIDE = 1024  # long side of a predict overlay, in pixels: it is for a person to look at


def _scaled(image, model_map: np.ndarray, max_side: int) -> tuple[np.ndarray, np.ndarray]:
    """(picture, map) at most ``max_side`` pixels on the long side: ``image`` a path (read again, a large JPEG
    decoded at reduced scale) or an RGB array; ``model_map`` the graph's map."""
    from .images import read_image, resize_map, resize_rgb_to

    if isinstance(image, np.ndarray):
        h, w = image.shape[:2]
    else:
        image, (h, w) = read_image(image, draft_size=max_side)
    scale = min(1.0, max_side / max(h, w))
    size = (max(1, round(h * scale)), max(1, round(w * scale)))
    return resize_rgb_to(image, *size), resize_map(model_map, *size)


def scaled_panel(image, model_map: np.ndarray, pixel_threshold: float, *, title: str, anomalous: bool | None,
                 max_side: int = OVERLAY_SIDE) -> Image.Image:
    """The heatmap panel of one scored picture (a path or an RGB array), at most ``max_side`` pixels long."""
    return panel(*_scaled(image, model_map, max_side), 2 * pixel_threshold, title=title, anomalous=anomalous)


def save_overlay(target: str | Path, path: str | Path, pred, pixel_threshold: float,
                 max_side: int = OVERLAY_SIDE) -> None:
    """The heatmap panel of one scored picture (a ``Prediction``), read again from ``path`` and drawn at most
    ``max_side`` pixels on its long side; JPEG when ``target`` ends in .jpg."""
    save_panel(target, *_scaled(path, pred.model_map, max_side), 2 * pixel_threshold,
               title=picture_title(path, pred.score, anomalous=pred.anomalous), anomalous=pred.anomalous)


def jpeg_bytes(picture: Image.Image, quality: int = 85) -> bytes:
    import io

    buf = io.BytesIO()
    picture.save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


OVERLAYS = ("all", "anomalous", "none")  # which pictures predict draws


class OverlayWriter:
    """Draws scored pictures' heatmap panels (:func:`save_overlay`, JPEG) into ``folder`` in one background
    thread, off the scoring path: ``with OverlayWriter(folder, pixel_threshold, "anomalous") as w:
    name = w.add(index, path, prediction)``. ``which``: all, anomalous (only those scored anomalous) or
    none; ``folder`` None draws nothing. Leaving the block waits for every picture and raises the first
    failure, so a picture that could not be written is never silent."""

    def __init__(self, folder: str | Path | None, pixel_threshold: float, which: str = "all"):
        if which not in OVERLAYS:
            raise ValueError(f"which={which!r}; use one of {', '.join(OVERLAYS)}")
        self.folder, self.pixel_threshold, self.which = folder, pixel_threshold, which
        self._futures = []

    def __enter__(self) -> "OverlayWriter":
        from concurrent.futures import ThreadPoolExecutor

        self._pool = ThreadPoolExecutor(1, thread_name_prefix="fre-edge-overlay")
        return self

    def add(self, index: int, path: str | Path, pred) -> str | None:
        """Queue the picture of one scored image; returns its file name, or None when none is drawn."""
        if self.folder is None or self.which == "none" or self.which == "anomalous" and not pred.anomalous:
            return None
        name = f"{index:04d}_{Path(path).stem}.jpg"
        self._futures.append(self._pool.submit(save_overlay, Path(self.folder) / name, path, pred,
                                               self.pixel_threshold))
        return name

    def __exit__(self, exc_type, exc, tb):
        self._pool.shutdown(wait=True)
        if exc_type is None:
            for future in self._futures:
                future.result()
        return False


def score_chart(kinds: dict[str, list[float]], threshold: float, width: int = 720) -> Image.Image:
    """One row of dots per kind of test image (``good`` first, then each defect) on a log score axis, with
    the image threshold as a red line: where the kinds overlap, and what moving the threshold would do."""
    values = np.array([v for vs in kinds.values() for v in vs] + [threshold], dtype=np.float64)
    lo, hi = np.log10(max(values.min(), 1e-12)), np.log10(max(values.max(), 1e-12))
    lo, hi = (lo - 0.05 * (hi - lo + 1e-9), hi + 0.05 * (hi - lo + 1e-9))
    left, right, row_h, top = 130, 20, 26, 24
    canvas = Image.new("RGB", (width, top + row_h * len(kinds) + 30), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)

    def x_of(v: float) -> int:
        return int(left + (np.log10(max(v, 1e-12)) - lo) / (hi - lo) * (width - left - right))

    draw.text((4, 4), "image score by kind (log scale); red line: threshold", fill=(0, 0, 0))
    for r, (kind, vs) in enumerate(kinds.items()):
        y = top + r * row_h + row_h // 2
        draw.text((4, y - 6), f"{kind} ({len(vs)})"[:20], fill=(0, 0, 0))
        draw.line([(left, y), (width - right, y)], fill=(225, 225, 225))
        colour = (0, 110, 220) if kind == "good" else (230, 120, 0)
        for i, v in enumerate(vs):
            x, dy = x_of(v), ((i * 7) % 11 - 5) if len(vs) > 10 else 0  # spread crowded rows a little
            draw.ellipse([x - 3, y + dy - 3, x + 3, y + dy + 3], outline=colour, width=2)
    tx = x_of(threshold)
    bottom = top + row_h * len(kinds)
    draw.line([(tx, top - 4), (tx, bottom)], fill=(220, 0, 0), width=2)
    for d in range(int(np.floor(lo)), int(np.ceil(hi)) + 1):
        for m in (1, 2, 5):
            v = m * 10.0 ** d
            if lo <= np.log10(v) <= hi:
                x = x_of(v)
                draw.line([(x, bottom), (x, bottom + 4)], fill=(0, 0, 0))
                draw.text((x - 10, bottom + 8), f"{v:g}", fill=(0, 0, 0))
    return canvas
