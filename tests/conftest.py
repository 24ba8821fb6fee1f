import os
import shutil
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO / "examples" / "bottle_sample"
DATASETS = Path(os.environ.get("FRE_EDGE_DATASETS", REPO.parent / "shared" / "datasets"))


def _need(path: Path) -> Path:
    if not path.exists():
        if os.environ.get("CI"):
            pytest.fail(f"shared dataset {path} is missing on CI")
        pytest.skip(f"shared dataset {path} not present")
    return path


@pytest.fixture(scope="session")
def bottle_root() -> Path:
    return _need(DATASETS / "mvtec_bottle")


@pytest.fixture(scope="session")
def mtd_root() -> Path:
    return _need(DATASETS / "magnetic_tile")


@pytest.fixture(scope="session")
def sample_root() -> Path:
    return SAMPLE


@pytest.fixture(scope="session")
def sample_model(tmp_path_factory):
    """A real fit (EfficientNet-Lite0 ImageNet weights) on the demo sample, saved once per session."""
    from fre_edge.fit.data import read_dataset
    from fre_edge.fit import FitConfig, fit_fre
    from fre_edge.fit.persist import save_model

    ds = read_dataset(SAMPLE)
    fitted = fit_fre([s.path for s in ds.train], FitConfig(input_size=224), progress=False)
    out = tmp_path_factory.mktemp("models") / "sample"
    save_model(fitted, out)
    return out, fitted


@pytest.fixture
def rng():
    return np.random.default_rng(0)


@pytest.fixture(scope="session")
def sample_bundle(sample_model, tmp_path_factory):
    from fre_edge.export import export_bundle

    out = tmp_path_factory.mktemp("bundles") / "sample"
    export_bundle(sample_model[1], out)
    return out


@pytest.fixture(scope="session")
def bottle_fit(bottle_root):
    """The default configuration fitted on the full real MVTec bottle training set."""
    from fre_edge.fit.data import read_dataset
    from fre_edge.fit import fit_fre

    ds = read_dataset(bottle_root)
    return ds, fit_fre([s.path for s in ds.train], progress=False)


@pytest.fixture(scope="session")
def bottle_bundle(bottle_fit, tmp_path_factory):
    from fre_edge.export import export_bundle

    out = tmp_path_factory.mktemp("bundles") / "bottle"
    export_bundle(bottle_fit[1], out)
    return out


@pytest.fixture
def bundle(sample_bundle, tmp_path):
    """A private copy of the demo bundle, free to damage."""
    return shutil.copytree(sample_bundle, tmp_path / "bundle")


@pytest.fixture
def model(sample_model, tmp_path):
    """A private copy of the demo model folder."""
    return shutil.copytree(sample_model[0], tmp_path / "model")
