import numpy as np
import pytest

from fre_edge.errors import FreEdgeError
from fre_edge.fit.metrics import aupro, auroc, pro_curve


@pytest.mark.parametrize(
    "labels, scores, expected",
    [
        ([0, 0, 1, 1], [0.1, 0.2, 0.3, 0.4], 1.0),
        ([0, 0, 1, 1], [0.4, 0.3, 0.2, 0.1], 0.0),
        ([0, 1, 0, 1], [0.1, 0.2, 0.3, 0.4], 0.75),  # pairs (g,b): (.1,.2) (.1,.4) (.3,.4) right, (.3,.2) wrong
        ([0, 1], [0.5, 0.5], 0.5),  # a tie counts half
    ],
)
def test_auroc_hand_worked(labels, scores, expected):
    assert auroc(labels, scores) == pytest.approx(expected)


def test_auroc_needs_both_classes():
    with pytest.raises(FreEdgeError, match="both good and anomalous"):
        auroc([0, 0], [0.1, 0.2])


def test_aupro_perfect_and_inverted():
    masks = np.zeros((2, 8, 8), bool)
    masks[0, 1:3, 1:3] = True
    masks[1, 5:8, 4:8] = True
    perfect = masks.astype(float) + 0.01 * np.random.default_rng(0).random(masks.shape)
    assert aupro(masks, perfect) == pytest.approx(1.0, abs=1e-3)
    assert aupro(masks, -perfect) == pytest.approx(0.0, abs=1e-3)


def test_pro_is_mean_over_regions_not_pixels():
    # one image: a big region (12 px) found entirely, a small one (2 px) not at all; normal pixels all 0.
    masks = np.zeros((1, 6, 6), bool)
    masks[0, 0:3, 0:4] = True  # 12 pixels
    masks[0, 5, 4:6] = True  # 2 pixels, separate region
    maps = np.zeros((1, 6, 6))
    maps[0, 0:3, 0:4] = 1.0
    fpr, pro = pro_curve(masks, maps)
    # at any threshold in [0, 1): FPR 0, big region overlap 1, small 0 -> PRO 0.5 (pixel-wise it would be 12/14)
    assert pro[fpr == 0].max() == pytest.approx(0.5)
    # the curve is flat at 0.5 until every normal pixel passes too: AUPRO(0.3) = 0.5
    assert aupro(masks, maps) == pytest.approx(0.5, abs=1e-3)


def test_aupro_linear_ramp():
    # normal pixels uniform in [0,1), anomaly region uniform over [0.5, 1.5): at FPR f the threshold is 1 - f,
    # the overlap is (1.5 - (1 - f)) / 1 = 0.5 + f, so AUPRO(0.3) = mean of 0.5+f over [0, 0.3] = 0.65
    n = 100_000
    rng = np.random.default_rng(1)
    masks = np.zeros((1, 1, 2 * n), bool)
    masks[0, 0, n:] = True
    maps = np.concatenate([rng.random(n), 0.5 + rng.random(n)])[None, None]
    assert aupro(masks, maps, steps=2000) == pytest.approx(0.65, abs=2e-3)


def test_aupro_errors():
    with pytest.raises(FreEdgeError, match="shape"):
        aupro(np.zeros((1, 4, 4), bool), np.zeros((1, 4, 5)))
    with pytest.raises(FreEdgeError, match="anomalous pixels"):
        aupro(np.zeros((1, 4, 4), bool), np.zeros((1, 4, 4)))
