"""The streamed fit (covariance from sums, partition by partition) and the fit on Dask: the same subspace,
thresholds and scores as the one-process fit that holds every feature, on the demo sample and both shared
sets; the exact pixel quantile from partitions' largest values; one line per bad --dask setting."""

from __future__ import annotations

import os
import subprocess

import numpy as np
import pytest
import torch

from fre_edge.errors import FreEdgeError
from fre_edge.fit import FitConfig, fit_fre
from fre_edge.fit.data import read_dataset
from fre_edge.fit.estimator import FRE
from fre_edge.fit.pca import Moments
from fre_edge.fit.thresholds import TopValues
from fre_edge.serve.process import fre_edge_cmd

# one subspace for score and map (no map heads, no position-free score)
SINGLE = {"map_layers": (), "position_free": "off"}
# what a streamed fit makes of the defaults: the map's own heads, the global image score
STREAMED = {"position_free": "off"}


def _have_dask() -> bool:
    try:
        import distributed  # noqa: F401
    except ImportError:
        if os.environ.get("CI"):
            pytest.fail('the dask extra is missing on CI: pip install -e ".[test]"')
        return False
    return True


@pytest.mark.parametrize("n", [1, 2, 999, 1001, 54321])
def test_top_values_give_numpys_quantile_for_any_split(rng, n):
    x = rng.gamma(2.0, size=n)
    splits = [np.array_split(x, 5), np.array_split(np.sort(x)[::-1], 5),  # all large values in one partition
              [x[:1], x[1:]]]
    for parts in splits:
        merged = TopValues(n)
        for p in parts:
            merged = merged.merge(TopValues(n).add(p))
        assert merged.quantile() == np.quantile(x, 0.999)
        assert merged.top.size <= merged.keep <= 0.001 * (n - 1) + 3  # a thousandth of the values, not all
    with pytest.raises(ValueError, match="expected"):
        TopValues(n + 1).add(x).quantile()


def test_moments_add_up_and_fit_the_same_subspace(rng):
    X = torch.tensor(rng.normal(size=(40, 3, 2, 2)) * np.linspace(4, 0.5, 12).reshape(3, 2, 2) + 2.0,
                     dtype=torch.float32)
    m = Moments.of(X[:15]) + Moments.of(X[15:])
    whole = Moments.of(X)
    assert m.n == 40 and torch.allclose(m.xtx, whole.xtx) and torch.allclose(m.sum, whole.sum)
    a = FRE(5, strategy="gram").fit(X)
    b = FRE(5).fit_moments(m, (3, 2, 2))
    assert b.strategy_ == "covariance" and b.n_features_in_ == 12
    np.testing.assert_allclose(np.abs((a.components_ * b.components_).sum(1)), 1.0, atol=1e-6)
    np.testing.assert_allclose(a.reconstruction_error(X), b.reconstruction_error(X), rtol=1e-4, atol=1e-5)
    with pytest.raises(FreEdgeError, match="needs the features themselves"):
        FRE(5, strategy="gram").fit_moments(m, (3, 2, 2))
    with pytest.raises(FreEdgeError, match="12 features for a layer of shape"):
        FRE(5).fit_moments(m, (3, 2, 3))


def _assert_same_fit(a, b, test_paths, rtol=1e-5):
    """Same subspace (up to sign), thresholds and scores of unseen images."""
    assert a.info["n_components"] == b.info["n_components"]
    for ha, hb in zip(a.detector.heads, b.detector.heads):
        torch.testing.assert_close(ha.mean, hb.mean, rtol=1e-5, atol=1e-5)
        cos = (ha.components.double() * hb.components.double()).sum(1).abs()
        assert float(cos.min()) > 1 - 1e-5
    for key in ("image", "pixel"):
        assert b.info["thresholds"][key] == pytest.approx(a.info["thresholds"][key], rel=rtol)
    from fre_edge.fit.features import load_batch

    with torch.inference_mode():
        batch = load_batch(test_paths, a.config.input_size, a.tiling)
        (sa, ma), (sb, mb) = a.detector(batch), b.detector(batch)
    np.testing.assert_allclose(sb.numpy(), sa.numpy(), rtol=rtol)
    np.testing.assert_allclose(mb.numpy(), ma.numpy(), rtol=1e-4, atol=1e-4 * float(ma.abs().max()))


def test_streamed_fit_equals_the_in_memory_fit_on_the_sample_with_two_layers(sample_root):
    ds = read_dataset(sample_root)
    train = [s.path for s in ds.train]
    cfg = dict(input_size=224, pool=4, layers=("blocks.4", "blocks.10"), **SINGLE)
    held = fit_fre(train, FitConfig(**cfg), progress=False)
    streamed = fit_fre(train, FitConfig(**cfg, strategy="covariance"), progress=False)
    assert held.info["fitted_by"]["features"].startswith("held in memory")
    assert streamed.info["fitted_by"]["features"].startswith("streamed")
    assert streamed.info["strategies"] == ["covariance", "covariance"]
    torch.testing.assert_close(streamed.detector.fusion, held.detector.fusion, rtol=1e-5, atol=1e-6)
    _assert_same_fit(held, streamed, [s.path for s in ds.test[:8]])


def test_streamed_fit_equals_the_in_memory_fit_on_magnetic_tile(mtd_root):
    ds = read_dataset(mtd_root)
    train = [s.path for s in ds.train[::3]]  # 254 of the 762: all of them only costs time
    held = fit_fre(train, FitConfig(pool=4, **STREAMED), progress=False)
    streamed = fit_fre(train, FitConfig(pool=4, strategy="covariance"), progress=False)
    assert "the image score is the global FRE" in streamed.info["warnings"][0]
    # the map's own heads from a sample of the fitting pictures (here all of them: fewer than MAP_SAMPLE)
    assert held.info["strategies"] == ["gram"] * 4 and streamed.info["strategies"] == ["covariance"] + ["gram"] * 3
    assert streamed.config.map_layers == held.config.map_layers == ("blocks.4", "blocks.10")
    # the maps' statistics (held-out pictures); one score layer: its own statistics are not used, and a
    # streamed fit does not pass over the fitting pictures again for them
    torch.testing.assert_close(streamed.detector.fusion[:, 2:], held.detector.fusion[:, 2:], rtol=1e-4, atol=1e-6)
    _assert_same_fit(held, streamed, [s.path for s in ds.test[:16]])


def test_a_streamed_fit_takes_the_maps_heads_from_an_even_sample(sample_root, monkeypatch):
    from fre_edge.fit import pipeline
    from fre_edge.fit.features import load_batch

    ds = read_dataset(sample_root)
    train = [s.path for s in ds.train]
    monkeypatch.setattr(pipeline, "MAP_SAMPLE", 6)  # fewer than the fitting pictures
    fitted = fit_fre(train, FitConfig(input_size=224, pool=4, strategy="covariance"), progress=False)
    assert fitted.info["fitted_by"]["map_heads_from_pictures"] == 6 < fitted.info["data"]["fit_images"]
    assert fitted.info["strategies"] == ["covariance", "gram", "gram", "gram"]  # the map heads from a sample
    assert [h.n_components for h in fitted.detector.heads[1:]] == [5, 5, 5]  # 6 pictures: at most 5 components
    with torch.inference_mode():
        scores, maps = fitted.detector(load_batch([s.path for s in ds.test], 224, None))
    labels = np.array([s.label for s in ds.test])
    assert scores[labels == 1].min() > scores[labels == 0].max()  # the score's subspace: from every picture
    assert np.isfinite(maps.numpy()).all() and maps.shape[1:] == (224, 224)


def test_dask_fit_equals_the_one_process_fit_on_bottle(bottle_root):
    if not _have_dask():
        pytest.skip("dask.distributed not installed")
    from fre_edge.cluster.engine import dask_client

    ds = read_dataset(bottle_root)
    train = [str(s.path.resolve()) for s in ds.train]
    held = fit_fre(train, FitConfig(pool=4, **STREAMED), progress=False)  # what a streamed fit makes
    with dask_client("local:2") as client:
        assert all(w.startswith("tcp://127.0.0.1:") for w in client.scheduler_info()["workers"])
        remote = fit_fre(train, FitConfig(pool=4), progress=False, client=client, partition_size=40)
    by = remote.info["fitted_by"]
    assert by["engine"] == "dask.distributed" and by["workers"] == 2 and by["fit_partitions"] == 5
    _assert_same_fit(held, remote, [s.path for s in ds.test[::6]])


def _fit_cli(tmp_path, *extra):
    out = tmp_path / "model"
    run = subprocess.run(fre_edge_cmd("fit", str(tmp_path / "data"), "-o", str(out), "--quiet", *extra),
                         capture_output=True, text=True, timeout=600)
    return run, out


@pytest.fixture
def sample_copy(sample_root, tmp_path):
    import shutil

    shutil.copytree(sample_root, tmp_path / "data")
    return tmp_path


def test_fit_cli_on_a_local_cluster_writes_the_same_model_as_here(sample_copy):
    if not _have_dask():
        pytest.skip("dask.distributed not installed")
    import json

    from fre_edge.fit.persist import load_model

    run, out = _fit_cli(sample_copy, "--input-size", "224", "--pool", "4", "--dask", "local:2")
    assert run.returncode == 0, run.stderr
    info = json.loads((out / "model.json").read_text())["info"]
    by, n = info["fitted_by"], info["data"]["fit_images"]
    assert by["engine"] == "dask.distributed" and by["workers"] == 2
    # by default about four partitions per worker: each returns the D x D sums, which are sent to be merged
    assert by["partition_size"] == -(-n // 8) and by["fit_partitions"] == -(-n // by["partition_size"]) <= 8
    ds = read_dataset(sample_copy / "data")
    assert "--dask fits from sums over images: the image score is the global FRE" in run.stderr
    here = fit_fre([s.path for s in ds.train], FitConfig(input_size=224, pool=4, **STREAMED), progress=False)
    _assert_same_fit(here, load_model(out), [s.path for s in ds.test[:6]])


@pytest.mark.parametrize("extra, message", [
    (("--dask", "local:two"), "--dask local:two: write local:N"),
    (("--dask", "local:2", "--strategy", "gram"), "--strategy gram needs every image's features in one process"),
    (("--dask", "local:1", "--memory-budget", "0.5"), "its D x D sums need 1.1 GB, over the 0.5 GB memory budget"),
    (("--memory-budget", "nan"), "is not a finite number"),
])
def test_bad_dask_fit_settings_are_one_line_and_write_nothing(sample_copy, extra, message):
    if not _have_dask():
        pytest.skip("dask.distributed not installed")
    run, out = _fit_cli(sample_copy, *extra)
    assert run.returncode == 2, run.stderr
    assert message in run.stderr and "Traceback" not in run.stderr
    assert not out.exists()


@pytest.mark.parametrize("bad", [0, -3, 2.5, True])
def test_a_bad_partition_size_is_refused_before_any_work(sample_root, bad):
    ds = read_dataset(sample_root)
    with pytest.raises(FreEdgeError, match="partition_size="):
        fit_fre([s.path for s in ds.train], FitConfig(input_size=224), progress=False, partition_size=bad)
