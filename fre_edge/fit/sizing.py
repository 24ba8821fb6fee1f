"""The model's input size from the good images: ``--input-size auto`` (the default).

Rule (it holds on any data, it does not depend on what the defects look like): keep the backbone's pixel
budget (S x S, 256 x 256 for Lite0, so the cost per image stays that of the square input) and, when the
pictures are clearly not square, spend it in their shape, so that both axes are scaled alike. A 500 x 1260
picture of a long part squeezed into 256 x 256 loses 4.9x along its length and 2.0x across it: a crack
running along the part gets 2.5 times thinner than one running across. At 160 x 416 both axes lose about
3.1x.

- the aspect is the median width / height of up to ``SAMPLE`` fitting images (read from the file headers,
  EXIF orientation applied), so one odd picture does not decide it;
- within ``SQUARE_TOLERANCE`` of 1 the input stays S x S: resizing such pictures to a square distorts them
  less than the rounding below would change the grid, and square inputs are what every bundle had so far;
- otherwise height = S / sqrt(a), width = S x sqrt(a), each rounded to a multiple of ``MULTIPLE`` (the
  backbones' coarsest stride, so the feature grid tiles the input exactly) and kept within 32-2048 px.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np

from ..images import picture_hw

SAMPLE = 256
SQUARE_TOLERANCE = 1.25
MULTIPLE = 32
MIN_SIDE, MAX_SIDE = 32, 2048


def _round(x: float) -> int:
    return int(min(MAX_SIDE, max(MIN_SIDE, MULTIPLE * round(x / MULTIPLE))))


def auto_input_size(items: Sequence, side: int, tiles: tuple | None = None) -> tuple[tuple[int, int], dict]:
    """((height, width), a record of the decision for model.json) for pictures ``items`` (paths or arrays)
    and the backbone's square side ``side``. With ``tiles`` = ((rows, cols), overlap) the size is a tile's,
    shaped so that the canvas of tiles has the pictures' aspect."""
    n = len(items)
    pick = np.unique(np.linspace(0, n - 1, min(n, SAMPLE)).round().astype(int)) if n else []
    aspects = [w / h for h, w in (picture_hw(items[i]) for i in pick)]
    picture_aspect = aspect = float(np.median(aspects)) if aspects else 1.0
    if tiles is not None:  # canvas width / height = tile aspect x (1 + (1 - o)(cols - 1)) / (1 + (1 - o)(rows - 1))
        (rows, cols), o = tiles
        aspect *= (1 + (1 - o) * (rows - 1)) / (1 + (1 - o) * (cols - 1))
    if max(aspect, 1 / aspect) < SQUARE_TOLERANCE:
        hw = (side, side)
    else:
        hw = (_round(side / math.sqrt(aspect)), _round(side * math.sqrt(aspect)))
    record = {"rule": "auto", "median_aspect_w_over_h": round(picture_aspect, 4), "images_sampled": len(aspects),
              "square_tolerance": SQUARE_TOLERANCE, "pixel_budget": side * side, "multiple_of": MULTIPLE}
    return hw, record
