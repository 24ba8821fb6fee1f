"""Tiling: a picture much larger than the model's input scored as overlapping tiles by the same graph
(numpy + Pillow only, shared by fitting, the runtime and quantization).

With ``--tiles RxC`` the picture is resized (Lanczos, as without tiles) to a canvas of R x C tiles of the
model's input size H x W that overlap their neighbours by ``overlap`` of a tile, and every tile goes through
the one exported graph, all tiles of a batch of pictures in one call. So the backbone sees the picture at
about R x C times the pixels of one input, at R x C times the cost.

- The subspace is shared by every tile position: one PCA fitted on all tiles of all good pictures, so a
  tile is "normal" if it looks like any good tile, wherever it lies. FRE without tiles keeps the position
  inside its one vector (a pixel's features are one block of it); across tiles, parts of a good picture
  that look alike at different places (a web, a long surface) share their variation instead of each
  position needing its own good examples, and the exported graph stays one graph for every tile.
- The image score is the largest tile score: a small defect lies in one tile or two, and the largest
  keeps its tile's whole signal where a sum or mean would dilute it with every good tile's noise. The
  image threshold is set the same way, from held-out good pictures' largest tile scores.
- The map is stitched at the canvas's resolution, each pixel the mean of the tiles that cover it (tiles
  share the subspace, so their maps are on one scale), then resized to the picture as without tiles.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .errors import FreEdgeError
from .images import input_hw, model_input

MAX_TILES = 64
IMAGE_SCORE = "the largest tile score"
MAP_RULE = "each pixel the mean of the tile maps that cover it"


def check_overlap(overlap) -> float:
    if isinstance(overlap, bool) or not (isinstance(overlap, (int, float)) and 0 <= overlap <= 0.5):
        raise FreEdgeError(f"tile overlap {overlap!r}; use a fraction of a tile from 0 to 0.5, e.g. 0.25")
    return overlap


def parse_grid(value) -> tuple[int, int]:
    """(rows, cols) from "RxC" text or a [rows, cols] pair."""
    given = value
    if isinstance(value, str):
        parts = value.lower().replace(" ", "").split("x")
        value = [int(p) for p in parts] if len(parts) == 2 and all(p.isdigit() for p in parts) else None
    if (isinstance(value, (list, tuple)) and len(value) == 2
            and all(isinstance(x, int) and not isinstance(x, bool) and x >= 1 for x in value)):
        if value[0] * value[1] > MAX_TILES:
            raise FreEdgeError(f"tiles {value[0]}x{value[1]} make {value[0] * value[1]} tiles a picture; use at most "
                               f"{MAX_TILES}, or a larger --input-size per tile")
        return int(value[0]), int(value[1])
    raise FreEdgeError(f"tiles {given!r} is not RxC; use e.g. 2x3 (rows x columns of tiles), or leave it out")


@dataclass(frozen=True)
class Tiling:
    grid: tuple[int, int]  # rows, cols
    tile: tuple[int, int]  # the model's input (height, width)
    overlap: float = 0.25  # fraction of a tile shared with its neighbour

    def __post_init__(self):
        object.__setattr__(self, "grid", parse_grid(self.grid))
        object.__setattr__(self, "tile", input_hw(self.tile))
        check_overlap(self.overlap)

    @property
    def count(self) -> int:
        return self.grid[0] * self.grid[1]

    @property
    def stride(self) -> tuple[int, int]:
        return tuple(t - int(round(self.overlap * t)) for t in self.tile)

    @property
    def canvas(self) -> tuple[int, int]:
        """(height, width) the picture is resized to before it is cut."""
        return tuple(t + (g - 1) * s for t, g, s in zip(self.tile, self.grid, self.stride))

    def origins(self) -> list[tuple[int, int]]:
        (sh, sw), (rows, cols) = self.stride, self.grid
        return [(r * sh, c * sw) for r in range(rows) for c in range(cols)]

    def split(self, canvas_rgb: np.ndarray) -> np.ndarray:
        """[count, H, W, 3] tiles of a canvas-sized picture, row by row."""
        h, w = self.tile
        return np.stack([canvas_rgb[y:y + h, x:x + w] for y, x in self.origins()])

    def stitch(self, maps: np.ndarray) -> np.ndarray:
        """One picture's tile maps [count, H, W] -> its map at the canvas's size (overlaps averaged)."""
        h, w = self.tile
        total = np.zeros(self.canvas, np.float64)
        cover = np.zeros(self.canvas, np.float64)
        for (y, x), m in zip(self.origins(), maps):
            total[y:y + h, x:x + w] += m
            cover[y:y + h, x:x + w] += 1.0
        return (total / cover).astype(np.float32)

    def reduce(self, scores: np.ndarray, maps: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Tile scores [n * count] and maps [n * count, H, W] of n pictures -> their scores [n], maps [n, canvas]."""
        n = len(scores) // self.count
        s = np.asarray(scores).reshape(n, self.count).max(axis=1)
        m = np.asarray(maps).reshape(n, self.count, *self.tile)
        return s, np.stack([self.stitch(x) for x in m]) if n else np.zeros((0, *self.canvas), np.float32)

    def to_json(self) -> dict:
        return {"grid": list(self.grid), "overlap": self.overlap, "tile": list(self.tile),
                "canvas": list(self.canvas), "subspace": "shared by every tile position",
                "image_score": IMAGE_SCORE, "map": MAP_RULE}

    @classmethod
    def from_json(cls, d) -> "Tiling":
        if not isinstance(d, dict) or not {"grid", "overlap", "tile"} <= set(d):
            raise FreEdgeError("tiling is not an object with grid, overlap and tile")
        t = cls(d["grid"], d["tile"], d["overlap"])
        if "canvas" in d and d["canvas"] != list(t.canvas):
            raise FreEdgeError(f"tiling canvas {d['canvas']} does not follow from its grid, tile and overlap")
        return t


def tiles_of(image, tiling: Tiling) -> tuple[np.ndarray, tuple[int, int]]:
    """([count, H, W, 3] tiles, the picture's (height, width)) for a path or an array."""
    canvas, hw = model_input(image, tiling.canvas)
    return tiling.split(canvas), hw


def inputs_of(image, size, tiling: Tiling | None) -> np.ndarray:
    """A picture's rows of the model's input: [1, H, W, 3], or with ``tiling`` its tiles [count, H, W, 3]."""
    return model_input(image, size)[0][None] if tiling is None else tiles_of(image, tiling)[0]


def per_picture(tiling: Tiling | None) -> int:
    """Model inputs (rows) a picture makes: 1, or its tile count."""
    return 1 if tiling is None else tiling.count


def pictures_per_batch(batch_size: int, tiling: Tiling | None) -> int:
    """Whole pictures in a batch of about ``batch_size`` model inputs (at least one picture)."""
    return max(1, batch_size // per_picture(tiling))
