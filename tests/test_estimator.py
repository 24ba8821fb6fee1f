import numpy as np
import pytest

from fre_edge.errors import FreEdgeError, NotFittedError
from fre_edge.fit.estimator import FRE


def _data(rng, n=40, shape=(4, 3, 3), rank=5):
    d = int(np.prod(shape))
    X = rng.normal(size=(n, rank)) @ rng.normal(size=(rank, d)) + 0.01 * rng.normal(size=(n, d)) + 2.0
    return X.reshape(n, *shape).astype(np.float32)


def test_fit_returns_self_and_learned_attributes(rng):
    X = _data(rng)
    fre = FRE(n_components=5)
    assert fre.fit(X) is fre
    assert fre.n_components_ == 5 and fre.components_.shape == (5, 36) and fre.mean_.shape == (36,)
    assert fre.n_features_in_ == 36 and fre.strategy_ == "covariance"  # 40 images > 36 features
    assert FRE(5).fit(X[:20]).strategy_ == "gram"  # fewer images than features
    assert 0.99 < fre.explained_variance_ratio_.sum() <= 1.0


def test_matches_direct_numpy(rng):
    X = _data(rng)
    Xn = _data(np.random.default_rng(5), n=6)
    fre = FRE(n_components=5).fit(X)
    flat, new = X.reshape(len(X), -1).astype(np.float64), Xn.reshape(len(Xn), -1).astype(np.float64)
    mu = flat.mean(0)
    V = np.linalg.svd(flat - mu, full_matrices=False)[2][:5]
    e = (new - mu) - (new - mu) @ V.T @ V
    np.testing.assert_allclose(fre.reconstruction_error(Xn), (e**2).sum(1), rtol=1e-4)
    np.testing.assert_allclose(fre.score_samples(Xn), -(e**2).sum(1), rtol=1e-4)  # sklearn: higher = normal
    np.testing.assert_allclose(fre.error_maps(Xn), (e**2).reshape(6, 4, 3, 3).mean(1), rtol=1e-4, atol=1e-7)
    np.testing.assert_allclose(fre.transform(Xn), (new - mu) @ V.T @ np.diag(np.sign(np.diag(V @ fre.components_.T))),
                               rtol=1e-3, atol=1e-3)
    np.testing.assert_allclose(fre.inverse_transform(fre.transform(Xn)), new - e, rtol=1e-4, atol=1e-4)


def test_unfitted_and_wrong_shape(rng):
    with pytest.raises(NotFittedError, match="not fitted"):
        FRE().score_samples(np.zeros((2, 36)))
    with pytest.raises(NotFittedError, match="not fitted"):
        FRE().transform(np.zeros((2, 36)))
    fre = FRE(n_components=3).fit(_data(rng))
    with pytest.raises(FreEdgeError, match=r"\(2, 35\).*36 features"):
        fre.score_samples(np.zeros((2, 35)))


def test_scoring_does_not_modify_input(rng):
    X = _data(rng)
    fre = FRE(0.9).fit(X)
    copy = X.copy()
    fre.score_samples(X)
    fre.error_maps(X)
    fre.inverse_transform(fre.transform(X))
    np.testing.assert_array_equal(X, copy)


@pytest.mark.parametrize("params, message", [
    ({"n_components": 1.2}, "strictly between 0 and 1"),
    ({"n_components": 0}, "at least 1"),
    ({"strategy": "svd9"}, "unknown strategy"),
    ({"n_components": float("nan")}, "strictly between 0 and 1"),
    ({"memory_budget_gb": 0}, "memory_budget_gb=0"),
    ({"ae_epochs": 0}, "ae_epochs=0"),
    ({"ae_epochs": 2.5}, "ae_epochs=2.5"),
])
def test_bad_parameters_fail_in_fit_not_init(rng, params, message):
    fre = FRE(**params)  # __init__ only stores
    with pytest.raises(FreEdgeError, match=message):
        fre.fit(_data(rng))


def test_clone_and_params(rng):
    from sklearn.base import clone

    X = _data(rng)
    fre = FRE(0.9, strategy="gram").fit(X)
    twin = clone(fre)
    assert twin.get_params() == {"n_components": 0.9, "strategy": "gram", "memory_budget_gb": 4.0, "ae_epochs": 250}
    assert not hasattr(twin, "components_")  # clone copies parameters, not what was learned
    np.testing.assert_array_equal(twin.fit(X).components_, fre.components_)


def test_transform_checks_shapes(rng):
    fre = FRE(3).fit(_data(rng))
    with pytest.raises(FreEdgeError, match=r"Z has shape \(2, 4\); pass \[n, 3\]"):
        fre.inverse_transform(np.zeros((2, 4)))


def test_autoencoder_epochs_is_a_parameter(rng):
    X = _data(rng)
    short = FRE(5, strategy="autoencoder", ae_epochs=1).fit(X)
    longer = FRE(5, strategy="autoencoder", ae_epochs=40).fit(X)
    assert short.strategy_ == longer.strategy_ == "autoencoder" and short.n_components_ == longer.n_components_ == 5
    # more training fits the good features better: lower reconstruction error on them
    assert longer.reconstruction_error(X).mean() < short.reconstruction_error(X).mean()
