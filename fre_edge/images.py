"""Image reading and resizing shared by fitting and the runtime (numpy + Pillow only, never torch).

Fitting and the runtime call the same functions, so a bundle sees pixels prepared exactly as at fit
time (same conversion, same Lanczos filter): the resize mismatch that breaks many exported anomaly
models cannot happen here.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from .errors import FreEdgeError
from .outputs import FreEdgeWarning

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")


def is_image_file(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_SUFFIXES and not path.name.startswith(".")


def to_rgb_uint8(image: np.ndarray) -> np.ndarray:
    """Convert an HxW, HxWx1, HxWx3 or HxWx4 array of uint8/uint16/float to HxWx3 uint8 RGB.

    Grey is repeated on three channels; alpha is dropped; 16-bit is scaled by 1/257; floats are taken
    to lie in [0, 1].
    """
    a = np.asarray(image)
    if a.ndim == 2:
        a = a[:, :, None]
    if a.ndim != 3 or a.shape[2] not in (1, 3, 4) or a.shape[0] < 1 or a.shape[1] < 1:
        raise FreEdgeError(
            f"image array has shape {a.shape}; pass HxW, HxWx1, HxWx3 (RGB) or HxWx4 (RGBA)"
        )
    if a.dtype == np.uint8:
        pass
    elif a.dtype == np.uint16:
        a = (a.astype(np.uint32) * 255 + 32767) // 65535
    elif np.issubdtype(a.dtype, np.floating):
        a = np.clip(np.rint(a * 255.0), 0, 255)
    elif np.issubdtype(a.dtype, np.integer):
        a = np.clip(a, 0, 255)
    else:
        raise FreEdgeError(f"image array has dtype {a.dtype}; pass uint8, uint16 or float in [0, 1]")
    a = a.astype(np.uint8, copy=False)
    if a.shape[2] == 1:
        a = np.repeat(a, 3, axis=2)
    elif a.shape[2] == 4:
        a = a[:, :, :3]
    return np.ascontiguousarray(a)


# JPEG DCT-domain downscaling (Image.draft) keeps at least this many decoded pixels per model input pixel
# on each side, so the exact Lanczos resize that follows still has the detail it needs (tests bound the
# score change against a full decode)
DRAFT_MARGIN = 2
_TURNED = (5, 6, 7, 8)  # EXIF orientations that swap width and height


def load_image(path: str | Path) -> np.ndarray:
    """Read an image file as HxWx3 uint8 RGB (grey, palette, RGBA and 16-bit are converted), upright as a
    viewer shows it (the EXIF orientation a camera or phone records is applied)."""
    return read_image(path)[0]


def input_hw(size) -> tuple[int, int]:
    """(height, width) of a model input from a side (square), a [height, width] pair or "HxW" text."""
    if isinstance(size, str):
        parts = size.lower().replace(" ", "").split("x")
        if not 1 <= len(parts) <= 2 or not all(p.isdigit() for p in parts):
            raise FreEdgeError(f"input size {size!r} is not N or HxW; use e.g. 256 or 192x480 (height x width)")
        size = int(parts[0]) if len(parts) == 1 else [int(p) for p in parts]
    if isinstance(size, int) and not isinstance(size, bool):
        return size, size
    if (isinstance(size, (list, tuple)) and len(size) == 2
            and all(isinstance(x, int) and not isinstance(x, bool) for x in size)):
        return int(size[0]), int(size[1])
    raise FreEdgeError(f"input size {size!r} is not N or HxW; use e.g. 256 or 192x480 (height x width)")


def size_json(size) -> int | list[int]:
    """An input size as model.json and the manifest store it: one number when square (as bundles always
    had), [height, width] otherwise."""
    h, w = input_hw(size)
    return h if h == w else [h, w]


def size_text(size) -> str:
    """"256" or "192x480" (height x width), for messages and tables."""
    h, w = input_hw(size)
    return str(h) if h == w else f"{h}x{w}"


def read_for_model(path: str | Path, size) -> tuple[np.ndarray, tuple[int, int]]:
    """(H x W x 3 uint8 as the model sees it, (height, width) of the upright picture); ``size`` is the
    model's input (a side or (height, width)).

    A JPEG much larger than the input is decoded at a reduced scale (1/2, 1/4 or 1/8, by the DCT) that still
    leaves ``DRAFT_MARGIN`` pixels per model pixel on the input's longer side, whatever the picture's
    orientation, then resized exactly: a 5 MP camera picture decodes several times faster, and fitting and
    the runtime both read through here.
    """
    image, hw = read_image(path, draft_size=DRAFT_MARGIN * max(input_hw(size)))
    return resize_rgb(image, size), hw


def picture_hw(item) -> tuple[int, int]:
    """(height, width) of an image file as a viewer shows it (header only), or of an HxW(xC) array."""
    if isinstance(item, np.ndarray):
        return int(item.shape[0]), int(item.shape[1])
    try:
        with Image.open(Path(item)) as im:
            w, h = im.size
            return (w, h) if im.getexif().get(0x0112) in _TURNED else (h, w)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise FreEdgeError(f"{item}: cannot read image ({exc.__class__.__name__}: {exc}); "
                           f"replace or remove the file") from None


def read_image(path: str | Path, draft_size: int | None = None) -> tuple[np.ndarray, tuple[int, int]]:
    """(HxWx3 uint8 RGB upright, (height, width) of the full picture). With ``draft_size``, a JPEG at least
    twice that size on its short side is decoded by the DCT at the smallest scale (1/2, 1/4, 1/8) that keeps
    ``draft_size`` pixels on each side, so the array may be smaller than the picture."""
    path = Path(path)
    if not path.is_file():
        raise FreEdgeError(f"{path}: no such image file; check the path")
    try:
        im = Image.open(path)
        if Image.MAX_IMAGE_PIXELS and im.size[0] * im.size[1] > Image.MAX_IMAGE_PIXELS:  # Pillow warns: ours, once
            warnings.warn(f"{path}: {im.size[0]} x {im.size[1]} pixels, more than Pillow decodes without a warning; "
                          f"it is scored, but such pictures are slow: downscale them at the camera",
                          FreEdgeWarning, stacklevel=2)
        with im:
            width, height = im.size
            if im.getexif().get(0x0112) in _TURNED:
                width, height = height, width
            if draft_size is not None and im.format == "JPEG" and min(im.size) >= 2 * draft_size:
                im.draft(None, (draft_size, draft_size))
            im.load()
            im = ImageOps.exif_transpose(im)
            if im.mode in ("I;16", "I;16B", "I;16L", "I"):
                arr = np.asarray(im, dtype=np.int64)
                arr = np.clip(arr, 0, 65535).astype(np.uint16)
            elif im.mode in ("RGB", "L"):
                arr = np.asarray(im)
            else:  # RGBA, LA, P, PA, CMYK, YCbCr, 1, F, ...
                arr = np.asarray(im.convert("RGB"))
    except Image.DecompressionBombError as exc:
        raise FreEdgeError(f"{path}: {exc.__class__.__name__}: the image is too large to decode safely ({exc}); "
                           f"downscale it or replace the file") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, EOFError) as exc:
        raise FreEdgeError(
            f"{path}: cannot read image ({exc.__class__.__name__}: {exc}); replace or remove the file"
        ) from None
    return to_rgb_uint8(arr), (height, width)


def find_images(root: Path, skip: Sequence[Path] = ()) -> list[Path]:
    """Image files under ``root`` (recursively, sorted), never inside a hidden folder, a folder in
    ``skip``, or a folder fre-edge wrote (a model, bundle or predictions folder with its marker file):
    fre-edge never reads its own outputs back as images."""
    from .outputs import output_kind

    skip = {Path(p).resolve() for p in skip}
    found = []
    for dirpath, dirnames, filenames in os.walk(root):
        here = Path(dirpath)
        dirnames[:] = sorted(d for d in dirnames if not d.startswith(".") and (here / d).resolve() not in skip
                             and output_kind(here / d) is None)
        found += [here / f for f in filenames if is_image_file(here / f) and (here / f).is_file()]
    return sorted(found)


def resize_rgb(image: np.ndarray, size) -> np.ndarray:
    """Resize HxWx3 uint8 to the model's input (a side or (height, width)) with Lanczos (the reference
    code's filter)."""
    h, w = input_hw(size)
    if image.shape[0] == h and image.shape[1] == w:
        return image
    return np.asarray(Image.fromarray(image).resize((w, h), Image.Resampling.LANCZOS))


def model_input(image: np.ndarray | str | Path, size) -> tuple[np.ndarray, tuple[int, int]]:
    """Path or array -> (H x W x 3 uint8 RGB at ``size``, exactly as the model saw it at fit time, and the
    picture's own (height, width))."""
    if isinstance(image, (str, Path)):
        return read_for_model(image, size)
    rgb = to_rgb_uint8(image)
    return resize_rgb(rgb, size), rgb.shape[:2]


def prepare(image: np.ndarray | str | Path, size) -> np.ndarray:
    """Path or array -> the model's input (H x W x 3 uint8 RGB), exactly as the model saw it at fit time."""
    return model_input(image, size)[0]


def resize_rgb_to(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """Resize HxWx3 uint8 to height x width (Lanczos), for pictures shown to people."""
    if image.shape[:2] == (height, width):
        return image
    return np.asarray(Image.fromarray(image).resize((width, height), Image.Resampling.LANCZOS))


def resize_map(amap: np.ndarray, height: int, width: int) -> np.ndarray:
    """Bilinear resize of a float anomaly map to height x width."""
    if amap.shape == (height, width):
        return amap.astype(np.float32, copy=False)
    im = Image.fromarray(amap.astype(np.float32), mode="F")
    return np.asarray(im.resize((width, height), Image.Resampling.BILINEAR), dtype=np.float32)


def load_mask(path: str | Path | None, height: int, width: int) -> np.ndarray:
    """Read a ground-truth mask as a bool HxW array at the given size (nearest neighbour).

    A pixel is defective above 127 (masks drawn 0 / 255); a mask whose values all lie at or below 127 (label
    masks drawn 0 / 1, or one number per defect kind) counts every non-zero pixel. ``None`` (a good image)
    gives an all-False mask.
    """
    if path is None:
        return np.zeros((height, width), dtype=bool)
    path = Path(path)
    try:
        with Image.open(path) as im:
            im = im.convert("L")
            if im.size != (width, height):
                im = im.resize((width, height), Image.Resampling.NEAREST)
            a = np.asarray(im)
            return a > (127 if a.max() > 127 else 0)
    except (UnidentifiedImageError, OSError) as exc:
        raise FreEdgeError(f"{path}: cannot read mask ({exc}); replace or remove the file") from None
