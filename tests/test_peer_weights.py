"""The peers' backbone: fre-edge's Lite0 ImageNet weights mapped onto timm's
tf_efficientnet_lite0 give the same features as fre-edge's own backbone, on real images."""

from __future__ import annotations

import os

import pytest
import torch

try:
    import timm
except ImportError:
    if os.environ.get("CI"):
        pytest.fail('timm is missing on CI: pip install -e ".[test]"')
    pytest.skip("timm not installed", allow_module_level=True)

from benchmarks.peers.lite0_timm import FEATURE_INDEX, lite0_state_dict_for  # noqa: E402
from fre_edge.fit.data import read_dataset  # noqa: E402
from fre_edge.fit.features import load_batch  # noqa: E402
from fre_edge.fit.config import FitConfig, build_detector  # noqa: E402


@pytest.mark.parametrize("size", [256, 224])
def test_timm_lite0_with_the_mapped_weights_gives_fre_edges_features(sample_root, size):
    net = timm.create_model("tf_efficientnet_lite0", pretrained=False, features_only=True,
                            out_indices=(FEATURE_INDEX,)).eval()
    net.load_state_dict(lite0_state_dict_for(net))
    det = build_detector(FitConfig(input_size=size, pool=1).validate(), [], [])
    x = load_batch([s.path for s in read_dataset(sample_root).test[:4]], size)
    with torch.inference_mode():
        ours, theirs = det.features(x)[0], net(det.normalize(x))[0]
    assert ours.shape == theirs.shape == (4, 112, size // 16, size // 16)
    torch.testing.assert_close(theirs, ours, rtol=1e-5, atol=1e-5 * float(ours.abs().max()))


def test_another_network_is_refused():
    net = timm.create_model("tf_efficientnet_lite1", pretrained=False, features_only=True)
    with pytest.raises(ValueError, match="not the same network|tensors wanted"):
        lite0_state_dict_for(net)
