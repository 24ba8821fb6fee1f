"""``FRE``: the linear core, the one place the subspace is fitted and applied, in scikit-learn's shape.

    fre = FRE(n_components=0.97).fit(X_good)      # X: [n_images, D] or [n_images, C, h, w] features
    fre.reconstruction_error(X)                   # [n] squared norm of x - mu - V^T V (x - mu): the FRE score
    fre.score_samples(X)                          # [n] its negative: scikit-learn's "higher = more normal"
    fre.error_maps(X)                             # [n, h, w] channel mean of the squared error
    fre.transform(X), fre.inverse_transform(Z)    # [n, k] coefficients, and back to [n, D]
    fre.fit_moments(Moments.of(X), shape)         # the same fit from sums over images (streamed, on a cluster)

``__init__`` only stores parameters; ``fit`` validates them and returns ``self``; learned values end in
``_``; it is a ``BaseEstimator``, so ``sklearn.base.clone`` and ``get_params`` work. Unfitted use raises
:class:`NotFittedError`; inputs of another width than seen in ``fit`` get an error naming both shapes;
inputs are never modified.

The image pipeline (``fre_edge.fit.pipeline``) fits one ``FRE`` per layer on pooled backbone features and
builds the exported head (``fre_edge.fit.model.FREHead``) from it with :meth:`FRE.head`; the INT8 refit
(``fre_edge.export.int8_head``) fits its heads with it too. Scoring here runs that same head module, so the
algebra of the exported graph and of this estimator is one piece of code.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from sklearn.base import BaseEstimator

from ..errors import FreEdgeError, NotFittedError
from .model import FREHead
from .pca import Moments, check_n_components, check_strategy, fit_subspace, subspace_from_moments


class FRE(BaseEstimator):
    """PCA of good images' features; what it cannot reconstruct is the anomaly.

    Parameters:
        n_components: a float in (0, 1) keeps that ratio of the variance; an int keeps that many components.
        strategy: ``auto``, ``gram``, ``covariance`` or ``autoencoder`` (see ``fre_edge.fit.pca``).
        memory_budget_gb: what ``auto`` may spend on a covariance matrix.
        ae_epochs: training epochs of the ``autoencoder`` strategy (the paper's 250 by default).

    Fitted attributes: ``mean_`` [D], ``components_`` [k, D] (orthonormal rows), ``n_components_``,
    ``explained_variance_ratio_`` [k] (NaN for the autoencoder), ``strategy_``, ``n_features_in_``,
    ``feature_shape_`` (C, h, w).
    """

    def __init__(self, n_components: float | int = 0.97, *, strategy: str = "auto", memory_budget_gb: float = 4.0,
                 ae_epochs: int = 250):
        self.n_components = n_components
        self.strategy = strategy
        self.memory_budget_gb = memory_budget_gb
        self.ae_epochs = ae_epochs

    def _validate_params(self) -> None:
        check_n_components(self.n_components)
        check_strategy(self.strategy)
        if not (isinstance(self.memory_budget_gb, (int, float)) and math.isfinite(self.memory_budget_gb)
                and self.memory_budget_gb > 0):
            raise FreEdgeError(f"memory_budget_gb={self.memory_budget_gb!r}; use a finite number of GB above 0")
        if isinstance(self.ae_epochs, bool) or not isinstance(self.ae_epochs, int) or self.ae_epochs < 1:
            raise FreEdgeError(f"ae_epochs={self.ae_epochs!r}; use a whole number of epochs, 1 or more")

    # -- fitting --------------------------------------------------------------------------------------
    def fit(self, X, y=None, *, progress: bool = False) -> "FRE":
        """Fit on good images' features ``X`` (numpy or torch, [n, D] or [n, C, h, w]); ``y`` is ignored."""
        self._validate_params()
        x = _as_tensor(X)
        if x.ndim not in (2, 4):
            raise FreEdgeError(f"X has shape {tuple(x.shape)}; pass [n_images, D] vectors or [n_images, C, h, w] "
                               f"features")
        self.feature_shape_ = tuple(x.shape[1:]) if x.ndim == 4 else (x.shape[1], 1, 1)
        flat = x.reshape(len(x), -1).clone()  # fit_subspace may work in place; the caller's data stays
        sub = fit_subspace(flat, self.n_components, self.strategy, int(self.memory_budget_gb * (1 << 30)),
                           progress=progress, epochs=self.ae_epochs)
        return self._set(sub, self.feature_shape_)

    def fit_moments(self, moments: Moments, feature_shape: tuple[int, int, int], *, overwrite: bool = False) -> "FRE":
        """Fit from the sums of x and x x^T over the good images (:class:`~.pca.Moments`, e.g. reduced from
        partitions on a cluster): the ``covariance`` strategy, exactly, without the features themselves.
        ``overwrite=True`` lets it turn the sums into the covariance in place (saves a D x D copy)."""
        self._validate_params()
        if self.strategy not in ("auto", "covariance"):
            raise FreEdgeError(f"strategy={self.strategy!r} needs the features themselves; fitting from sums is the "
                               f"covariance strategy (use auto or covariance)")
        if moments.sum.numel() != int(np.prod(feature_shape)):
            raise FreEdgeError(f"moments of {moments.sum.numel()} features for a layer of shape {tuple(feature_shape)}")
        return self._set(subspace_from_moments(moments, self.n_components, overwrite), tuple(feature_shape))

    def _set(self, sub, feature_shape) -> "FRE":
        self.feature_shape_ = tuple(int(v) for v in feature_shape)
        self.subspace_ = sub
        self.mean_ = sub.mean.numpy().copy()
        self.components_ = sub.components.numpy().copy()
        self.n_components_ = int(self.components_.shape[0])
        self.explained_variance_ratio_ = sub.explained_variance_ratio.numpy().copy()
        self.strategy_ = sub.strategy
        self.n_features_in_ = int(sub.mean.numel())
        self._head = FREHead(sub, self.feature_shape_)
        return self

    def head(self) -> FREHead:
        """The torch module that applies this subspace inside the detector (and the exported graph)."""
        self._fitted()
        return FREHead(self.subspace_, self.feature_shape_)

    # -- applying -------------------------------------------------------------------------------------
    def _fitted(self) -> None:
        if not hasattr(self, "subspace_"):
            raise NotFittedError("this FRE instance is not fitted yet; call fit(X) with good images' features first")

    def _check(self, X) -> torch.Tensor:
        self._fitted()
        x = _as_tensor(X)
        width = int(np.prod(x.shape[1:])) if x.ndim >= 2 else -1
        if width != self.n_features_in_:
            raise FreEdgeError(f"X has shape {tuple(x.shape)} ({width} features per sample) but FRE was fitted on "
                               f"{self.n_features_in_} features {self.feature_shape_}; pass features of the same layer")
        return x.reshape(len(x), *self.feature_shape_)

    @torch.inference_mode()
    def reconstruction_error(self, X) -> np.ndarray:
        """The FRE image score: squared norm of the feature reconstruction error (higher = more anomalous)."""
        x = self._check(X)
        return self._head(x)[0].numpy()

    def score_samples(self, X) -> np.ndarray:
        """scikit-learn's convention for outlier detectors: higher = more normal, so minus the FRE score."""
        return -self.reconstruction_error(X)

    @torch.inference_mode()
    def error_maps(self, X) -> np.ndarray:
        """Anomaly maps on the feature grid [n, h, w]: channel mean of the squared reconstruction error."""
        x = self._check(X)
        return self._head(x)[1].numpy()

    @torch.inference_mode()
    def transform(self, X) -> np.ndarray:
        """Coefficients in the subspace, (x - mu) V^T: [n, k]."""
        x = self._check(X).reshape(len(X), -1)
        return ((x - self.subspace_.mean) @ self.subspace_.components.T).numpy()

    @torch.inference_mode()
    def inverse_transform(self, Z) -> np.ndarray:
        """Back to feature space, mu + z V: [n, D] (the reconstruction, when ``Z = transform(X)``)."""
        self._fitted()
        z = _as_tensor(Z)
        if z.ndim != 2 or z.shape[1] != self.n_components_:
            raise FreEdgeError(f"Z has shape {tuple(z.shape)}; pass [n, {self.n_components_}] coefficients")
        return (z @ self.subspace_.components + self.subspace_.mean).numpy()


@torch.inference_mode()
def fusion_statistics(fres: list, features: list) -> torch.Tensor:
    """[layers, 4]: mean and std of each layer's FRE scores and map values on good images' ``features``
    (one array per layer); several layers are normalised by these before their scores and maps are added.
    Fitting and the INT8 refit both compute them here."""
    rows = []
    for fre, f in zip(fres, features):
        s, m = fre._head(fre._check(f))
        rows.append([s.mean(), s.std().clamp_min(1e-12), m.mean(), m.std().clamp_min(1e-12)])
    return torch.tensor([[float(v) for v in r] for r in rows], dtype=torch.float32)


@torch.inference_mode()
def held_out_map_scales(fusion: torch.Tensor, fres: list, features: list) -> torch.Tensor:
    """``fusion`` with each head's map deviation taken on held-out good pictures' ``features`` instead: a head
    fitted with nearly as many components as pictures reconstructs its own fitting pictures almost exactly,
    so its map's spread there understates the spread on new good parts and would overweight it in the sum."""
    out = fusion.clone()
    out[:, 2:] = fusion_statistics(fres, features)[:, 2:]
    return out


def _as_tensor(X) -> torch.Tensor:
    """float32 torch view or copy of X; never a view the caller could see modified (we never write to it)."""
    if isinstance(X, torch.Tensor):
        return X.detach().to(torch.float32)
    return torch.from_numpy(np.array(X, dtype=np.float32, copy=True))
