"""The position-free image score at fit time: its head, its scale against the global score, and whether to
keep it, chosen from good pictures alone.

``fit_local`` fits :class:`~.model.LocalHead` (one subspace of local vectors, from their C x C sums);
``log_norm`` gives the means and deviations of both scores' logs on held-out good pictures, with which
``FREDetector.score_features`` puts the local score on the global score's scale.

Which rule to keep: held-out good pictures against the same pictures with a patch of another good picture
pasted in (a defect whose place and size nobody chose). Two rules compete: the global FRE score alone, and
the larger of it and the position-free score. The second catches small defects on parts that move in the
fixture, where one subspace per position blurs; on aligned parts whose texture varies from place to place it
can only add false rejects. Which case a line is in shows in how well each rule tells the pasted pictures
from the untouched ones, so the fit measures that and keeps the position-free score only when it separates
them clearly better: by ``MARGIN`` at least, and surely so for the pictures at hand. A gain measured on a
dozen held-out pictures can be chance, so the pictures are drawn again with replacement (``BOOTSTRAP``
times, each with its own pasted copies) and the gain must stay above zero in all but ``SURE`` of those
draws; with few held-out pictures the fit keeps the global score unless the gain is large. model.json
records both AUROCs and the gain's lower bound.
"""

from __future__ import annotations

import numpy as np
import torch

from .model import LocalHead, fuse_position_free
from .pca import Moments, subspace_from_moments

PER_PICTURE = 2  # pasted copies of each held-out picture
MARGIN = 0.005  # the position-free rule must beat the global score's AUROC by this much to be kept
DONORS = 32  # fitting pictures the patches are cut from (evenly spaced)
MIN_NORM_PICTURES = 10  # held-out good pictures the position-free score's scaling needs (mean and deviation)
LOCAL_VARIANCE = 0.97  # the position-free subspace keeps this share of the local vectors' variance, as FRE does
BOOTSTRAP = 1000  # draws of the held-out pictures (with replacement) that bound the position-free rule's gain
SURE = 0.05  # the gain's lower bound: its 5th percentile over those draws (a one-sided 95% bound)


def log_norm(global_scores: np.ndarray, local_scores: np.ndarray) -> np.ndarray:
    """[mean, std] of the global scores' logs, then of the local scores', on good pictures (std floored)."""
    def ms(x):
        lx = np.log(np.maximum(np.asarray(x, dtype=np.float64), 1e-30))
        return [float(lx.mean()), max(float(lx.std(ddof=1)) if len(lx) > 1 else 0.0, 1e-6)]
    return np.array(ms(global_scores) + ms(local_scores))


def fit_local(feats: torch.Tensor, window: int = 3) -> LocalHead:
    """The position-free head: exact PCA (97% of the variance) of every location's local vector in ``feats``
    [N, C, h, w] (unpooled), from their sums (C x C, whatever N)."""
    C = feats.shape[1]
    m = Moments(0, torch.zeros(C, dtype=torch.float64), torch.zeros(C, C, dtype=torch.float64))
    for i in range(0, len(feats), 64):
        v = LocalHead.vectors(feats[i : i + 64], window)
        m.add_(v.reshape(-1, C))
    return LocalHead(subspace_from_moments(m, LOCAL_VARIANCE, overwrite=True), window)


def pasted(inputs: np.ndarray, donors: np.ndarray, rng: np.random.Generator, per: int = PER_PICTURE) -> np.ndarray:
    """``per`` copies of each uint8 [N, H, W, 3] input, each with a square patch of a random donor pasted in:
    side 1/16 to 1/6 of the shorter side, cut and put at random places, turned by a random quarter turn."""
    n, H, W = inputs.shape[:3]
    lo, hi = max(2, min(H, W) // 16), max(3, min(H, W) // 6)
    out = np.repeat(inputs, per, axis=0)
    for a in out:
        d = donors[rng.integers(len(donors))]
        s = int(rng.integers(lo, hi))
        y, x = rng.integers(0, H - s + 1), rng.integers(0, W - s + 1)
        yd, xd = rng.integers(0, H - s + 1), rng.integers(0, W - s + 1)
        a[y : y + s, x : x + s] = np.rot90(d[yd : yd + s, xd : xd + s], int(rng.integers(0, 4)))
    return out


@torch.inference_mode()
def choose_image_score(detector, local, norm: torch.Tensor, good_scores: np.ndarray, good_local: np.ndarray,
                       hold_inputs: np.ndarray, donors: np.ndarray, seed: int, batch_size: int = 16) -> dict:
    """{"rule", "auroc_global", "auroc_max", ...}: each rule's AUROC, held-out good inputs against pasted copies.

    ``detector`` holds the fitted FRE heads (no position-free head); ``good_scores`` / ``good_local``: its global
    and the local head's scores of the held-out inputs, whose logs gave ``norm``."""
    from .metrics import auroc

    bad = pasted(hold_inputs, donors, np.random.default_rng(seed))
    g, lo = [], []
    for i in range(0, len(bad), batch_size):
        feats = detector.features(torch.from_numpy(bad[i : i + batch_size]))
        g.append(detector.global_score_features(feats)[0].double().numpy())
        lo.append(local(feats[len(detector.heads)])[0].double().numpy())
    bad_g, bad_l = np.concatenate(g), np.concatenate(lo)

    def fused(gs, ls):
        return fuse_position_free(torch.from_numpy(gs), torch.from_numpy(ls), norm.double()).numpy()

    labels = np.r_[np.zeros(len(good_scores)), np.ones(len(bad_g))]
    good_max, bad_max = fused(good_scores, good_local), fused(bad_g, bad_l)
    a_global = auroc(labels, np.r_[good_scores, bad_g])
    a_max = auroc(labels, np.r_[good_max, bad_max])
    low = gain_lower_bound(np.asarray(good_scores, np.float64), bad_g, good_max, bad_max, seed)
    keep = a_max >= a_global + MARGIN and low > 0
    return {"rule": "max(global, position-free)" if keep else "global", "auroc_global": round(a_global, 4),
            "auroc_max": round(a_max, 4), "margin": MARGIN, "gain_lower_bound": round(low, 4),
            "bound": f"5th percentile of the gain over {BOOTSTRAP} draws of the held-out pictures",
            "good": int(len(good_scores)), "pasted": int(len(bad_g)),
            "test": "held-out good pictures against copies with a patch of another good picture pasted in"}


def gain_lower_bound(good_g, bad_g, good_m, bad_m, seed: int) -> float:
    """The ``SURE`` quantile of (AUROC of the max rule - AUROC of the global score) over ``BOOTSTRAP`` draws
    with replacement of the held-out pictures, each drawn with its own pasted copies (``pasted`` keeps a
    picture's copies together: picture i's are rows i * per ... i * per + per - 1)."""
    from .metrics import auroc_good_bad

    n = len(good_g)
    per = len(bad_g) // n
    rng = np.random.default_rng(seed + 1)
    gains = np.empty(BOOTSTRAP)
    for b in range(BOOTSTRAP):
        i = rng.integers(0, n, n)
        j = (i[:, None] * per + np.arange(per)).ravel()
        gains[b] = auroc_good_bad(good_m[i], bad_m[j]) - auroc_good_bad(good_g[i], bad_g[j])
    return float(np.quantile(gains, SURE))
