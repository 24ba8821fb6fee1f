"""One batched forward pass over a list of images, with a progress bar: pooled features per layer."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from ..images import prepare


def load_batch(paths: Sequence[str | Path | np.ndarray], size: int) -> torch.Tensor:
    return torch.from_numpy(np.stack([prepare(p, size) for p in paths]))


@torch.inference_mode()
def extract_features(detector, paths: Sequence, *, batch_size: int = 16, progress: bool = True,
                     desc: str = "features") -> list[torch.Tensor]:
    """Pooled features of every image, one [N, C, h, w] float32 tensor per layer (preallocated)."""
    from tqdm.auto import tqdm

    out: list[torch.Tensor] | None = None
    n = len(paths)
    bar = tqdm(total=n, desc=desc, unit="img", disable=None if progress else True, leave=False)
    for i in range(0, n, batch_size):
        batch = load_batch(paths[i : i + batch_size], detector.input_size)
        feats = detector.features(batch)
        if out is None:
            out = [torch.empty((n, *f.shape[1:]), dtype=torch.float32) for f in feats]
        for o, f in zip(out, feats):
            o[i : i + f.shape[0]] = f
        bar.update(batch.shape[0])
    bar.close()
    return out
