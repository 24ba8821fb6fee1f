"""One batched forward pass over a list of images, with a progress bar: pooled features per layer."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from ..tiling import Tiling, inputs_of, per_picture, pictures_per_batch


def load_batch(paths: Sequence[str | Path | np.ndarray], size, tiling: Tiling | None = None) -> torch.Tensor:
    """The model's uint8 input for pictures (paths or arrays): one row each, or with ``tiling`` its tiles each."""
    return torch.from_numpy(np.concatenate([inputs_of(p, size, tiling) for p in paths]))


@torch.inference_mode()
def extract_features(detector, paths: Sequence, *, batch_size: int = 16, progress: bool = True,
                     desc: str = "features", tiling: Tiling | None = None) -> list[torch.Tensor]:
    """Pooled features of every image, one [N, C, h, w] float32 tensor per layer (preallocated); with
    ``tiling``, of every tile: [N x tiles, C, h, w], each picture's tiles in a row."""
    from tqdm.auto import tqdm

    out: list[torch.Tensor] | None = None
    n, per = len(paths), per_picture(tiling)
    bar = tqdm(total=n, desc=desc, unit="img", disable=None if progress else True, leave=False)
    step = pictures_per_batch(batch_size, tiling)
    for i in range(0, n, step):
        batch = load_batch(paths[i : i + step], detector.input_size, tiling)
        feats = detector.features(batch)
        if out is None:
            out = [torch.empty((n * per, *f.shape[1:]), dtype=torch.float32) for f in feats]
        for o, f in zip(out, feats):
            o[i * per : i * per + f.shape[0]] = f
        bar.update(batch.shape[0] // per)
    bar.close()
    return out
