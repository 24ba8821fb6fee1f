import numpy as np
import pytest
import torch

from fre_edge.errors import FreEdgeError
from fre_edge.fit.model import FREHead
from fre_edge.fit.pca import choose_strategy, fit_autoencoder, fit_covariance, fit_gram, fit_subspace, n_components_for


def _low_rank(rng, n=60, d=48, rank=6, noise=0.01):
    basis = rng.normal(size=(rank, d))
    X = rng.normal(size=(n, rank)) * np.linspace(5, 1, rank) @ basis + noise * rng.normal(size=(n, d)) + 3.0
    return torch.tensor(X, dtype=torch.float32)


def _numpy_fre(X_fit, X_new, k):
    mu = X_fit.mean(0)
    _, _, Vt = np.linalg.svd(X_fit - mu, full_matrices=False)
    V = Vt[:k].T
    e = (X_new - mu) - (X_new - mu) @ V @ V.T
    return (e**2).sum(1), e


@pytest.mark.parametrize(
    "cumsum, level, max_rank, expected",
    [
        ([0.5, 0.8, 0.97, 1.0], 0.97, 4, 3),  # reaching the level exactly counts
        ([0.5, 0.8, 0.96, 1.0], 0.97, 4, 4),  # one more component to pass it
        ([0.98, 0.99, 1.0], 0.97, 3, 1),  # first component already passes: 1, never 0
        ([0.5, 0.8, 0.96, 1.0], 0.97, 2, 2),  # capped at the rank
        ([0.5, 0.8, 0.96, 1.0], 3, 4, 3),  # an int is a count
        ([0.5, 0.8, 0.96, 1.0], 10, 4, 4),  # a count above the rank is capped
    ],
)
def test_n_components_table(cumsum, level, max_rank, expected):
    assert n_components_for(np.array(cumsum), level, max_rank) == expected


@pytest.mark.parametrize("bad", [0.0, 1.0, 1.5, -0.2, 0, -3, True])
def test_n_components_rejects(bad):
    with pytest.raises(FreEdgeError, match="n_components"):
        n_components_for(np.array([0.5, 1.0]), bad, 2)


def test_gram_matches_numpy_svd(rng):
    X = _low_rank(rng)
    sub = fit_gram(X, 6)
    head = FREHead(sub, (3, 4, 4))
    Xn = torch.tensor(rng.normal(size=(5, 48)), dtype=torch.float32) + 3.0
    score, amap = head(Xn.view(5, 3, 4, 4))
    ref, e = _numpy_fre(X.double().numpy(), Xn.double().numpy(), 6)
    np.testing.assert_allclose(score.numpy(), ref, rtol=1e-4)
    np.testing.assert_allclose(amap.numpy(), (e**2).reshape(5, 3, 4, 4).mean(1), rtol=1e-4, atol=1e-6)
    # explained variance ratios equal numpy's
    s = np.linalg.svd(X.double().numpy() - X.double().numpy().mean(0), compute_uv=False) ** 2
    np.testing.assert_allclose(sub.explained_variance_ratio.numpy(), (s / s.sum())[:6], rtol=1e-6)


def test_gram_and_covariance_agree(rng):
    X = _low_rank(rng)
    a, b = fit_gram(X, 0.97), fit_covariance(X, 0.97, chunk=7)
    assert a.components.shape == b.components.shape
    k = a.components.shape[0]
    Pa = a.components.double().T @ a.components.double()
    Pb = b.components.double().T @ b.components.double()
    assert torch.allclose(Pa, Pb, atol=1e-4)  # the same subspace (signs of vectors may differ)
    assert torch.allclose(a.mean, b.mean, atol=1e-5)
    assert 1 <= k <= 6


def test_autoencoder_finds_the_pca_subspace(rng):
    X = _low_rank(rng, n=200, noise=0.05)
    pca = fit_gram(X, 6)
    ae = fit_autoencoder(X, 6, epochs=60, lr=1e-3, batch_size=32, ae_probe=12)
    probe_only = fit_autoencoder(X, 6, epochs=0, ae_probe=12)
    Xn = X[:20] + 0.3 * torch.tensor(rng.normal(size=(20, 48)), dtype=torch.float32)
    s_pca = FREHead(pca, (48, 1, 1))(Xn.view(20, 48, 1, 1))[0]
    s_ae = FREHead(ae, (48, 1, 1))(Xn.view(20, 48, 1, 1))[0]
    assert ae.components.shape == pca.components.shape
    s_probe = FREHead(probe_only, (48, 1, 1))(Xn.view(20, 48, 1, 1))[0]
    np.testing.assert_allclose(s_ae.numpy(), s_pca.numpy(), rtol=0.05)
    # training on all images moved it closer to the full PCA than the 12-image probe it started from
    assert (s_ae - s_pca).abs().mean() < 0.5 * (s_probe - s_pca).abs().mean()


def test_fit_does_not_touch_callers_data(rng):
    X = _low_rank(rng)
    before = X.clone()
    for strategy in ("gram", "covariance"):
        fit_subspace(X, 0.9, strategy)
    head = FREHead(fit_gram(X, 3), (48, 1, 1))
    f = X[:4].view(4, 48, 1, 1)
    f_before = f.clone()
    head(f)
    assert torch.equal(X, before) and torch.equal(f, f_before)


@pytest.mark.parametrize("n, d, budget, expected", [
    (100, 10_000, 1 << 30, "gram"),
    (10_000, 500, 1 << 30, "covariance"),
    (200_000, 50_000, 1 << 30, "autoencoder"),
])
def test_choose_strategy(n, d, budget, expected):
    assert choose_strategy(n, d, budget) == expected


def test_fit_subspace_errors():
    with pytest.raises(FreEdgeError, match="at least 2"):
        fit_subspace(torch.ones(1, 5))
    with pytest.raises(FreEdgeError, match="zero variance"):
        fit_subspace(torch.ones(4, 5), strategy="gram")
    with pytest.raises(FreEdgeError, match="unknown strategy"):
        fit_subspace(torch.randn(4, 5), strategy="magic")
