"""``FRE``: the feature-space estimator in scikit-learn's shape, on arrays of feature vectors.

    fre = FRE(n_components=0.97).fit(X_good)      # X: [n_images, D] (or [n, C, h, w])
    fre.score_samples(X)                          # [n] sum of squared reconstruction error
    fre.error_maps(X)                             # [n, h, w] channel mean of squared error

``__init__`` only stores parameters; ``fit`` validates them and returns ``self``; learned values end
in ``_``. Unfitted use raises :class:`NotFittedError`; inputs of another width than seen in ``fit`` get
an error naming both shapes; inputs are never modified. The image pipeline (backbone, pooling,
thresholds) lives in ``fre_edge.fit``; this class is its linear core, usable on any features.
"""

from __future__ import annotations

import numpy as np
import torch

from .errors import FreEdgeError, NotFittedError
from .model import FREHead
from .pca import STRATEGIES, fit_subspace


class FRE:
    def __init__(self, n_components: float | int = 0.97, *, strategy: str = "auto",
                 memory_budget_gb: float = 4.0):
        self.n_components = n_components
        self.strategy = strategy
        self.memory_budget_gb = memory_budget_gb

    # -- fitting --------------------------------------------------------------------------------------
    def fit(self, X, y=None) -> "FRE":
        X = np.asarray(X, dtype=np.float32)
        if X.ndim not in (2, 4):
            raise FreEdgeError(f"X has shape {X.shape}; pass [n_images, D] vectors or [n_images, C, h, w] features")
        if self.strategy not in STRATEGIES:
            raise FreEdgeError(f"unknown strategy {self.strategy!r}; use one of {', '.join(STRATEGIES)}")
        self.feature_shape_ = tuple(X.shape[1:]) if X.ndim == 4 else (X.shape[1], 1, 1)
        flat = torch.from_numpy(X.reshape(len(X), -1).copy())
        sub = fit_subspace(flat, self.n_components, self.strategy, int(self.memory_budget_gb * (1 << 30)))
        self.head_ = FREHead(sub, self.feature_shape_)
        self.mean_ = sub.mean.numpy().copy()
        self.components_ = sub.components.numpy().copy()
        self.n_components_ = int(self.components_.shape[0])
        self.explained_variance_ratio_ = sub.explained_variance_ratio.numpy().copy()
        self.strategy_ = sub.strategy
        self.n_features_in_ = int(flat.shape[1])
        return self

    # -- scoring --------------------------------------------------------------------------------------
    def _check(self, X) -> torch.Tensor:
        if not hasattr(self, "head_"):
            raise NotFittedError("this FRE instance is not fitted yet; call fit(X) with good images' features first")
        X = np.asarray(X, dtype=np.float32)
        width = int(np.prod(X.shape[1:])) if X.ndim >= 2 else -1
        if width != self.n_features_in_:
            raise FreEdgeError(f"X has shape {X.shape} ({width} features per sample) but FRE was fitted on "
                               f"{self.n_features_in_} features {self.feature_shape_}; pass features of the same layer")
        return torch.from_numpy(X.reshape(len(X), *self.feature_shape_).copy())

    @torch.inference_mode()
    def score_samples(self, X) -> np.ndarray:
        """Image scores: the squared norm of the feature reconstruction error (higher = more anomalous)."""
        x = self._check(X)
        return self.head_(x)[0].numpy()

    @torch.inference_mode()
    def error_maps(self, X) -> np.ndarray:
        """Anomaly maps on the feature grid: channel mean of the squared reconstruction error."""
        x = self._check(X)
        return self.head_(x)[1].numpy()

    @torch.inference_mode()
    def reconstruct(self, X) -> np.ndarray:
        """mu + V V^T (x - mu), flattened [n, D]."""
        x = self._check(X).reshape(len(X), -1)
        V = self.head_.components
        return ((x - self.head_.mean) @ V.T @ V + self.head_.mean).numpy()
