"""Score a labelled test set with a fitted detector: metrics, and heatmap pictures to look at."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from .data import Sample
from ..errors import FreEdgeError
from .features import load_batch
from ..images import load_mask
from .metrics import aupro, auroc
from ..tiling import pictures_per_batch


@torch.inference_mode()
def score_images(detector, images: Sequence, *, batch_size: int = 16, progress: bool = True,
                 desc: str = "scoring", tiling=None) -> tuple[np.ndarray, np.ndarray]:
    """Scores [N] and anomaly maps [N, H, W] (model input size; with ``tiling``, the canvas's) of paths or
    arrays."""
    from tqdm.auto import tqdm

    scores, maps = [], []
    with tqdm(total=len(images), desc=desc, unit="img", disable=None if progress else True, leave=False) as bar:
        step = pictures_per_batch(batch_size, tiling)
        for i in range(0, len(images), step):
            batch = load_batch(images[i : i + step], detector.input_size, tiling)
            s, m = (t.numpy() for t in detector(batch))
            if tiling is not None:
                s, m = tiling.reduce(s, m)
            scores.append(s)
            maps.append(m)
            bar.update(len(s))
    return np.concatenate(scores), np.concatenate(maps)


def compute_metrics(samples: Sequence[Sample], scores: np.ndarray, maps: np.ndarray,
                    image_threshold: float | None = None) -> dict:
    labels = np.array([s.label for s in samples])
    out = {"n_images": len(samples), "n_anomalous": int(labels.sum()), "image_auroc": auroc(labels, scores)}
    if image_threshold is not None:
        pred = scores > image_threshold
        out["at_threshold"] = {
            "threshold": float(image_threshold),
            "false_reject_rate": float(pred[labels == 0].mean()),
            "miss_rate": float((~pred[labels == 1]).mean()),
        }
    out["operating_points"] = operating_points(scores[labels == 0], scores[labels == 1])
    # pixel metrics over the good pictures and the defective ones with a mask
    drawn = np.array([not s.label or s.mask is not None for s in samples])
    if any(s.mask is not None for s in samples if s.label):
        masks = np.stack([load_mask(s.mask, *maps.shape[1:]) for s, d in zip(samples, drawn) if d])
        out["pixel_auroc"] = auroc(masks, maps[drawn])
        out["aupro"] = aupro(masks, maps[drawn])
        out["pixel_metrics_images"] = int(drawn.sum())
    return out


def operating_points(good: np.ndarray, bad: np.ndarray) -> dict:
    """The two thresholds a line engineer asks about, measured on a labelled test set (a score above the
    threshold is anomalous): the highest one that still catches every defect, with the good images it
    rejects, and the lowest one that rejects no good image, with the defects it misses. Each sits halfway
    between the two scores that bound it, so a rounded copy of it (as printed) still does the same."""
    if good.size == 0 or bad.size == 0:
        return {}
    good, bad = np.asarray(good, np.float64), np.asarray(bad, np.float64)
    weakest, worst = bad.min(), good.max()
    below, above = good[good < weakest], bad[bad > worst]
    catch = (below.max() + weakest) / 2 if below.size else 0.99 * weakest
    no_reject = (worst + above.min()) / 2 if above.size else 1.01 * worst
    return {
        "catch_every_defect": {"threshold": float(catch), "false_reject_rate": float((good > catch).mean())},
        "reject_no_good_image": {"threshold": float(no_reject), "miss_rate": float((bad <= no_reject).mean())},
    }


class BundleScorer:
    """A loaded runtime bundle behind the same call as FREDetector: uint8 batch -> (scores, maps)."""

    def __init__(self, det):
        self.det = det
        self.input_size = det.input_size
        self.tiling = det.tiling

    def __call__(self, batch):
        s, m = self.det.infer_prepared(np.asarray(batch))
        return torch.from_numpy(s), torch.from_numpy(m)


def evaluate(fitted, samples: Sequence[Sample], *, batch_size: int = 16,
             progress: bool = True) -> tuple[dict, np.ndarray, np.ndarray]:
    """``fitted``: a FittedFRE (torch) or a runtime AnomalyDetector (an exported bundle, any precision)."""
    if not samples:
        raise FreEdgeError("the dataset has no test images; evaluation needs test/good and test/<defect> images")
    scorer = fitted.detector if hasattr(fitted, "config") else BundleScorer(fitted)
    t0 = time.perf_counter()
    scores, maps = score_images(scorer, [s.path for s in samples], batch_size=batch_size, progress=progress,
                                tiling=fitted.tiling)
    t_score = time.perf_counter() - t0
    metrics = compute_metrics(samples, scores, maps, fitted.image_threshold)
    metrics["scoring_seconds"] = t_score
    return metrics, scores, maps


def pick_for_pictures(samples: Sequence[Sample], scores: np.ndarray, n: int) -> list[int]:
    """Up to n indices: alternately the highest-scored good image (worst false alarm) and the
    lowest-scored anomalous image (worst miss), then the most obvious anomalies."""
    good = [i for i in np.argsort(-scores) if samples[i].label == 0]
    bad_low = [i for i in np.argsort(scores) if samples[i].label == 1]
    bad_high = bad_low[::-1]
    picked: list[int] = []
    for pool in zip(good, bad_low, bad_high):
        for i in pool:
            if i not in picked and len(picked) < n:
                picked.append(int(i))
    rest = [int(i) for i in np.argsort(-scores) if int(i) not in picked]
    return (picked + rest)[:n]


def write_pictures(fitted, samples: Sequence[Sample], scores, maps, out_dir: Path, n: int) -> list[Path]:
    """``scores.png`` (every test image's score by kind, with the threshold) and n heatmap panels."""
    from ..images import prepare
    from ..visualize import picture_title, save_panel, score_chart

    out_dir = Path(out_dir)
    kinds: dict[str, list[float]] = {}
    for smp, sc in sorted(zip(samples, scores), key=lambda t: (t[0].label, t[0].defect)):
        kinds.setdefault(smp.defect, []).append(float(sc))
    chart = out_dir / "scores.png"
    score_chart(kinds, fitted.image_threshold).save(chart)
    size = maps.shape[1:]
    vmax = 2.0 * fitted.pixel_threshold
    written = []
    for rank, i in enumerate(pick_for_pictures(samples, scores, n)):
        s = samples[i]
        mask = load_mask(s.mask, *size) if s.label else np.zeros(size, bool)
        judged = bool(scores[i] > fitted.image_threshold)
        title = picture_title(s.path, float(scores[i]), fitted.image_threshold, judged)
        path = out_dir / f"{rank:02d}_{s.defect}_{s.path.stem}.png"
        save_panel(path, prepare(s.path, size), maps[i], vmax, mask=mask, title=title, anomalous=judged)
        written.append(path)
    return [chart, *written]
