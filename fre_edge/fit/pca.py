"""The linear part of FRE: fit a subspace of "normal" features, by one of several strategies.

Each strategy returns a :class:`Subspace` (mean, orthonormal-ish components, explained variance
ratios) for the rows of ``X`` (one flattened feature vector per image):

- ``gram``: eigen-decomposition of the N x N Gram matrix of the centred data; exact PCA; memory
  N*D. The right choice when there are fewer images than features (the usual case).
- ``covariance``: the D x D covariance from sums of x and x x^T (:class:`Moments`), exact PCA; memory D*D
  whatever N. The sums add over any split of the images, so the fit streams them batch by batch and
  partition by partition (``fre_edge.fit.passes``, on Dask too) without holding the features; the
  eigen-decomposition of the D x D matrix then costs O(D^3), independent of N.
- ``autoencoder``: the paper's FRE-AE, a tied linear autoencoder x_hat = W^T W (x - mu) + mu trained
  with Adam on mini-batches; memory k*D; for when neither N*D nor D*D fits. Its rank k is resolved on a
  random subset of at most ``ae_probe`` images by exact PCA, which also initialises W.

``choose_strategy`` picks one from N, D and a memory budget. All linear algebra that decides the
subspace runs in float64; the stored components are float32.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ..errors import FreEdgeError

from ..choices import STRATEGIES  # noqa: E402


@dataclass
class Subspace:
    mean: torch.Tensor  # [D] float32
    components: torch.Tensor  # [k, D] float32, rows span the normal subspace
    explained_variance_ratio: torch.Tensor  # [k] float64 (of the full variance); NaN for the AE
    strategy: str


def check_strategy(strategy: str) -> str:
    if strategy not in STRATEGIES:
        raise FreEdgeError(f"unknown strategy {strategy!r}; use one of {', '.join(STRATEGIES)}")
    return strategy


def check_n_components(n_components) -> float | int:
    """A count (int >= 1) or a variance ratio (float strictly in (0, 1)); anything else is refused."""
    if isinstance(n_components, (bool, np.bool_)):
        raise FreEdgeError("n_components must be a float in (0, 1) or a positive int, not a bool")
    if isinstance(n_components, (int, np.integer)):
        if n_components < 1:
            raise FreEdgeError(f"n_components={n_components}; a count must be at least 1")
        return int(n_components)
    level = float(n_components)
    if not 0.0 < level < 1.0:  # NaN fails this too
        raise FreEdgeError(f"n_components={level}; a variance ratio must lie strictly between 0 and 1")
    return level


def n_components_for(ratio_cumsum: np.ndarray, n_components: float | int, max_rank: int) -> int:
    """Resolve ``n_components`` (float in (0, 1): variance ratio; int: count) to a count.

    For a ratio, the smallest k whose first k components explain at least that ratio; never 0 and never
    more than the rank of the data.
    """
    n_components = check_n_components(n_components)
    if isinstance(n_components, int):
        return min(n_components, max_rank)
    level = n_components
    # first index whose cumulative ratio reaches the level, +1 to turn an index into a count
    k = int(np.searchsorted(ratio_cumsum, level - 1e-12, side="left")) + 1
    return max(1, min(k, max_rank))


def _finish(mean64, eigvals, eigvecs_rows, n_components, strategy) -> Subspace:
    """eigvals descending (float64), eigvecs_rows [m, D] matching, unit norm (or a function of k giving the
    first k of them, so that a D x D matrix of eigenvectors is never copied whole)."""
    eigvals = torch.clamp(eigvals, min=0)
    total = float(eigvals.sum())
    if total <= 0:
        raise FreEdgeError("the training features have zero variance (all images identical?); use varied good images")
    ratio = eigvals / total
    rank = int((eigvals > eigvals[0] * 1e-10).sum())
    k = n_components_for(torch.cumsum(ratio, 0).numpy(), n_components, rank)
    return Subspace(
        mean=mean64.float(),
        components=(eigvecs_rows(k) if callable(eigvecs_rows) else eigvecs_rows[:k]).float().contiguous(),
        explained_variance_ratio=ratio[:k].clone(),
        strategy=strategy,
    )


def fit_gram(X: torch.Tensor, n_components) -> Subspace:
    X64 = X.double()
    mean = X64.mean(0)
    Xc = X64 - mean
    gram = Xc @ Xc.T
    eigvals, U = torch.linalg.eigh(gram)
    eigvals, U = eigvals.flip(0), U.flip(1)
    keep = eigvals > max(float(eigvals[0]), 0.0) * 1e-12
    eigvals, U = eigvals[keep], U[:, keep]
    comps = (U.T @ Xc) / torch.sqrt(eigvals)[:, None]  # rows are unit eigenvectors of Xc^T Xc
    # eigenvalues of the covariance (N-1 denominator), for reporting
    return _finish(mean, eigvals / max(X.shape[0] - 1, 1), comps, n_components, "gram")


@dataclass
class Moments:
    """Sums over images of x and x x^T (float64): what the covariance strategy needs, for any N.

    ``a + b`` is the moments of both sets of images: partitions are reduced in any order or tree."""

    n: int
    sum: torch.Tensor  # [D]
    xtx: torch.Tensor  # [D, D]

    @classmethod
    def of(cls, X: torch.Tensor) -> "Moments":
        x = X.reshape(X.shape[0], -1).double()
        return cls(int(x.shape[0]), x.sum(0), x.T @ x)

    def __add__(self, other: "Moments") -> "Moments":
        if self.sum.shape != other.sum.shape:
            raise FreEdgeError(f"moments of {self.sum.numel()} and {other.sum.numel()} features cannot be added")
        return Moments(self.n + other.n, self.sum + other.sum, self.xtx + other.xtx)

    def add_(self, X: torch.Tensor) -> "Moments":
        """Add a batch of images' features [n, ...] in place."""
        x = X.reshape(X.shape[0], -1).double()
        self.n += int(x.shape[0])
        self.sum += x.sum(0)
        self.xtx.addmm_(x.T, x)
        return self


def covariance_bytes(d: int) -> int:
    """What the covariance strategy holds per layer: the D x D sums, the covariance and eigh's vectors."""
    return 3 * d * d * 8


def subspace_from_moments(m: Moments, n_components, overwrite: bool = False) -> Subspace:
    """Exact PCA from the sums: the covariance (N - 1 denominator) and its eigen-decomposition.

    Memory: the D x D sums (turned into the covariance in place with ``overwrite``, else copied), the D x D
    eigenvectors and eigh's workspace; only the k kept eigenvectors are copied out."""
    if m.n < 2:
        raise FreEdgeError(f"{m.n} training image(s); FRE needs at least 2 good images, preferably 50 or more")
    mean = m.sum / m.n
    cov = m.xtx if overwrite else m.xtx.clone()
    cov.addr_(mean, mean, alpha=-m.n).div_(m.n - 1)
    if overwrite:
        m.xtx = None  # no longer the sums
    eigvals, V = torch.linalg.eigh(cov)
    del cov
    d = V.shape[1]
    return _finish(mean, eigvals.flip(0), lambda k: V[:, d - k:].flip(1).T, n_components, "covariance")


def fit_covariance(X: torch.Tensor, n_components, chunk: int = 256) -> Subspace:
    N, D = X.shape
    m = Moments(0, torch.zeros(D, dtype=torch.float64), torch.zeros(D, D, dtype=torch.float64))
    for i in range(0, N, chunk):
        m.add_(X[i : i + chunk])
    return subspace_from_moments(m, n_components, overwrite=True)


def fit_autoencoder(
    X: torch.Tensor,
    n_components,
    *,
    epochs: int = 250,
    batch_size: int = 64,
    lr: float = 1e-3,
    ae_probe: int = 512,
    seed: int = 0,
    progress: bool = False,
) -> Subspace:
    """FRE-AE: tied linear autoencoder trained by Adam on MSE (the paper's settings by default)."""
    N, D = X.shape
    gen = torch.Generator().manual_seed(seed)
    probe = X[torch.randperm(N, generator=gen)[: min(N, ae_probe)]]
    init = fit_gram(probe, n_components)  # resolves k; the AE then learns from all images
    k = init.components.shape[0]
    mean = torch.zeros(D, dtype=torch.float64)
    for i in range(0, N, 1024):
        mean += X[i : i + 1024].double().sum(0)
    mean = (mean / N).float()
    # start from the probe's PCA (as the paper initialises its AE from PCA), then learn from all images
    W = init.components.clone().requires_grad_(True)
    opt = torch.optim.Adam([W], lr=lr)
    it = range(epochs)
    if progress:
        from tqdm.auto import tqdm

        it = tqdm(it, desc="FRE-AE epochs", unit="epoch", disable=None)  # None: only on a terminal
    for _ in it:
        perm = torch.randperm(N, generator=gen)
        for i in range(0, N, batch_size):
            xc = X[perm[i : i + batch_size]] - mean
            recon = (xc @ W.T) @ W
            loss = torch.mean((xc - recon) ** 2)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    ratio = torch.full((k,), float("nan"), dtype=torch.float64)
    return Subspace(mean=mean, components=W.detach().contiguous(), explained_variance_ratio=ratio,
                    strategy="autoencoder")


def choose_strategy(n: int, d: int, memory_budget_bytes: int) -> str:
    """gram when N <= D and N*D doubles fit; else covariance when D*D doubles fit; else autoencoder."""
    if n <= d and 2 * n * d * 8 <= memory_budget_bytes:
        return "gram"
    if covariance_bytes(d) <= memory_budget_bytes:
        return "covariance"
    return "autoencoder"


def fit_subspace(X: torch.Tensor, n_components=0.97, strategy: str = "auto",
                 memory_budget_bytes: int = 4 << 30, **ae_kwargs) -> Subspace:
    if X.ndim != 2:
        raise FreEdgeError(f"features must be a 2-D [images, features] array, got shape {tuple(X.shape)}")
    n, d = X.shape
    if n < 2:
        raise FreEdgeError(f"{n} training image(s); FRE needs at least 2 good images, preferably 50 or more")
    check_strategy(strategy)
    if strategy == "auto":
        strategy = choose_strategy(n, d, memory_budget_bytes)
    if strategy == "gram":
        return fit_gram(X, n_components)
    if strategy == "covariance":
        return fit_covariance(X, n_components)
    return fit_autoencoder(X, n_components, **ae_kwargs)
