"""Which features should make the map, and which rule the image score, on aligned and on moved parts.

One backbone pass per set (EfficientNet-Lite0, blocks.4 at stride 8 and blocks.10 at stride 16, 256 x 256
input), then every candidate fitted on the same fitting pictures (10% of them held out to normalise, as
``fre-edge fit`` does) and scored on the same test pictures:

maps  ``coarse``  the score's subspace alone: blocks.10, pool 2, one subspace of the whole tensor (FRE)
      ``s16``     blocks.10, no pooling          ``s8``  blocks.4, no pooling
      ``s8+s16``  both, each divided by its spread on held-out good pictures, added
      ``coarse+s8+s16``  the three, each so scaled, added
      (at 97% of the variance, and with the fine heads' components capped at @k, which is what their cost
      grows with)
      ``s8/4``    blocks.4 averaged over 4 x 4 cells: the score's 8 x 8 grid (one subspace, 97%)
      ``coarse+s8+s16+s8/4@16``  the default: the pyramid of both layers, each unpooled (16 components)
                  and on the score's grid; ``s8+s16+s8/4@16`` the same without the score's coarse map
scores ``global``     the FRE score of the coarse subspace
       ``map_top``    mean of the top 1% of the fine map
       ``free``       position-free FRE: one subspace of 3 x 3-averaged blocks.10 vectors shared by every
                      location; the largest location error
       ``global+free``, ``global+map_top``: each score standardised on held-out good pictures, added
       ``max(global,free)``: the larger of the two scores' logs, each standardised on held-out good pictures
       ``chosen at fit``: the rule ``fre-edge fit`` keeps from the good pictures alone (held-out ones against
                          copies with a patch of another good picture pasted in; ``fit.position_free``)

Sets: the two shared sets, ``mtd_wide``, and ``moved`` copies of the shared sets in which every picture
(fitting and test, with its mask) is shifted by up to 8% of its side, rotated by up to 10 degrees and scaled
by 0.9-1.1 at random, as a loose fixture does.

    python -m benchmarks.map_score_study [--sets ...] [--caps 16 32 64]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
import torch.nn.functional as F

from ._common import environment, header_md, write
from ._sets import EVAL_HW, dataset

SIZE = (256, 256)
SETS = ["mvtec_bottle", "magnetic_tile", "mtd_wide", "mvtec_bottle:moved", "magnetic_tile:moved", "mtd_wide:moved"]


def moved(image: np.ndarray, rng: np.random.Generator, mask: np.ndarray | None = None):
    """The picture (and its mask) moved as a loose fixture would: shift <= 8%, rotation <= 10 deg, scale 0.9-1.1."""
    import cv2

    h, w = image.shape[:2]
    angle, scale = rng.uniform(-10, 10), rng.uniform(0.9, 1.1)
    tx, ty = rng.uniform(-0.08, 0.08) * w, rng.uniform(-0.08, 0.08) * h
    m = cv2.getRotationMatrix2D((w / 2, h / 2), angle, scale)
    m[:, 2] += (tx, ty)
    out = cv2.warpAffine(image, m, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT_101)
    if mask is None:
        return out
    return out, cv2.warpAffine(mask.astype(np.uint8), m, (w, h), flags=cv2.INTER_NEAREST) > 0


def load_set(name: str):
    """(fit inputs [N,H,W,3] uint8, test inputs, labels, masks [M,256,256]) of a set, moved if asked."""
    from fre_edge.images import load_image, load_mask, resize_rgb
    from fre_edge.fit.data import Sample  # noqa: F401

    base, _, how = name.partition(":")
    fit_paths, test, _ = dataset(base)
    rng = np.random.default_rng(0)

    def one(path, mask_path=None, label=0):
        img = load_image(path)
        if mask_path is not None:
            mask = load_mask(mask_path, *img.shape[:2])
        else:
            mask = np.zeros(img.shape[:2], bool)
        if how == "moved":
            img, mask = moved(img, rng, mask)
        m = torch.from_numpy(mask.astype(np.float32))[None, None]
        m = F.interpolate(m, size=EVAL_HW, mode="nearest")[0, 0].numpy() > 0.5
        return resize_rgb(img, SIZE), m

    fit = np.stack([one(p)[0] for p in fit_paths])
    pairs = [one(s.path, s.mask if s.label else None, s.label) for s in test]
    return fit, np.stack([p[0] for p in pairs]), np.array([s.label for s in test]), np.stack([p[1] for p in pairs])


@torch.inference_mode()
def features(images: np.ndarray, batch: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
    """blocks.4 [N,40,32,32] and blocks.10 [N,112,16,16] of uint8 NHWC pictures."""
    from fre_edge.fit.backbones import create_backbone, get_spec

    spec = get_spec("efficientnet_lite0")
    bb = create_backbone("efficientnet_lite0", ("blocks.4", "blocks.10"), input_size=SIZE, pretrained=True).eval()
    mean = torch.tensor(spec.mean).view(1, 3, 1, 1)
    std = torch.tensor(spec.std).view(1, 3, 1, 1)
    outs = [[], []]
    for i in range(0, len(images), batch):
        x = torch.from_numpy(images[i : i + batch]).permute(0, 3, 1, 2).float() / 255.0
        for o, f in zip(outs, bb((x - mean) / std)):
            o.append(f.clone())
    return torch.cat(outs[0]), torch.cat(outs[1])


def fre(train: torch.Tensor, n_components):
    from fre_edge.fit.estimator import FRE

    with torch.inference_mode(False):
        return FRE(n_components).fit(train.clone())


def upsample(m: np.ndarray) -> np.ndarray:
    return F.interpolate(torch.from_numpy(m)[:, None].float(), size=EVAL_HW, mode="bilinear",
                         align_corners=False)[:, 0].numpy()


def zscore(ref: np.ndarray, x: np.ndarray) -> np.ndarray:
    return (x - ref.mean()) / max(ref.std(), 1e-12)


def free_scores(train: torch.Tensor, hold: torch.Tensor, test: torch.Tensor):
    """fre-edge's position-free head (fit.model.LocalHead, fitted by fit.position_free.fit_local) on unpooled features:
    (held-out good, test) worst-location scores, and the test pictures' location errors."""
    from fre_edge.fit.position_free import fit_local

    head = fit_local(train)
    with torch.inference_mode():
        (hs, _), (ts, tm) = head(hold), head(test)
    return hs.numpy(), (ts.numpy(), tm.numpy()), head.n_components


def log_max(g_hold, l_hold, g, lo) -> np.ndarray:
    """fre-edge's rule: the larger of the two scores' logs, each standardised on held-out good pictures."""
    return np.maximum(zscore(np.log(g_hold), np.log(g)), zscore(np.log(l_hold), np.log(lo)))


def fit_time_choice(fit_imgs, fit_i, hold_i, gm, local_train, g_hold, l_hold) -> dict:
    """The rule ``fre-edge fit --position-free auto`` keeps (fit.position_free): held-out good pictures against
    copies with a patch of a fitting picture pasted in, each rule's AUROC."""
    from fre_edge.fit.metrics import auroc
    from fre_edge.fit.position_free import DONORS, MARGIN, fit_local, gain_lower_bound, pasted

    donors = fit_imgs[fit_i[np.linspace(0, len(fit_i) - 1, DONORS).astype(int)]]
    bad = pasted(fit_imgs[hold_i], donors, np.random.default_rng(0))
    _, f10 = features(bad)
    head = fit_local(local_train)
    with torch.inference_mode():
        bad_l = head(f10)[0].numpy()
    bad_g = gm.reconstruction_error(F.avg_pool2d(f10, 2))
    y = np.r_[np.zeros(len(g_hold)), np.ones(len(bad_g))]
    good_m, bad_m = log_max(g_hold, l_hold, g_hold, l_hold), log_max(g_hold, l_hold, bad_g, bad_l)
    a_g = auroc(y, np.r_[g_hold, bad_g])
    a_m = auroc(y, np.r_[good_m, bad_m])
    low = gain_lower_bound(np.asarray(g_hold, np.float64), np.asarray(bad_g, np.float64), good_m, bad_m, 0)
    keep = a_m >= a_g + MARGIN and low > 0
    return {"rule": "max(global,free)" if keep else "global", "auroc_global": a_g, "auroc_max": a_m,
            "gain_lower_bound": low}


def top_mean(maps: np.ndarray, q: float = 0.01) -> np.ndarray:
    flat = maps.reshape(len(maps), -1)
    k = max(1, int(round(q * flat.shape[1])))
    return np.sort(flat, 1)[:, -k:].mean(1)


def study(name: str, caps: list[int]) -> dict:
    from fre_edge.fit.metrics import aupro, auroc

    t0 = time.perf_counter()
    fit_imgs, test_imgs, labels, masks = load_set(name)
    f4, f10 = features(np.concatenate([fit_imgs, test_imgs]))
    n_fit = len(fit_imgs)
    order = np.random.default_rng(0).permutation(n_fit)
    n_hold = max(1, int(round(0.1 * n_fit)))
    hold_i, fit_i = torch.from_numpy(np.sort(order[:n_hold])), torch.from_numpy(np.sort(order[n_hold:]))
    test_i = torch.arange(n_fit, len(f4))
    rows = {"set": name, "fit": int(len(fit_i)), "hold": int(n_hold), "test": int(len(test_i)),
            "defective": int(labels.sum()), "maps": {}, "scores": {}}
    has_masks = bool(masks.any())

    def judge_map(m):
        out = {}
        if has_masks:
            out = {"pixel_auroc": auroc(masks, m), "aupro": aupro(masks, m)}
        return out

    coarse = F.avg_pool2d(f10, 2)
    gm = fre(coarse[fit_i], 0.97)
    g_hold = gm.reconstruction_error(coarse[hold_i])
    g_test = gm.reconstruction_error(coarse[test_i])
    rows["maps"]["coarse"] = {"k": gm.n_components_, **judge_map(upsample(gm.error_maps(coarse[test_i])))}
    rows["scores"]["global"] = auroc(labels, g_test)

    coarse_map = upsample(gm.error_maps(coarse[test_i])) / upsample(gm.error_maps(coarse[hold_i])).std()
    fine = {}
    for cap in [None, *caps]:
        tag = "" if cap is None else f"@{cap}"
        fused_hold, fused_test, ks = 0.0, 0.0, []
        for layer, f in (("s8", f4), ("s16", f10)):
            m = fre(f[fit_i], 0.97 if cap is None else cap)
            mh = upsample(m.error_maps(f[hold_i]))
            mt = upsample(m.error_maps(f[test_i]))
            ks.append(m.n_components_)
            if cap is None:
                rows["maps"][layer] = {"k": m.n_components_, **judge_map(mt)}
            fused_hold = fused_hold + mh / max(mh.std(), 1e-12)  # scaled by good pictures' spread, as fit does
            fused_test = fused_test + mt / max(mh.std(), 1e-12)
        rows["maps"]["s8+s16" + tag] = {"k": ks, **judge_map(fused_test)}
        rows["maps"]["coarse+s8+s16" + tag] = {"k": [gm.n_components_, *ks],
                                               **judge_map(coarse_map + fused_test)}
        fine[cap] = (fused_hold, fused_test, ks)
    grid = F.avg_pool2d(f4, 4)  # blocks.4 on the score's grid (fit.config.FitConfig.grid_heads)
    gh = fre(grid[fit_i], 0.97)
    grid_test = upsample(gh.error_maps(grid[test_i]))
    rows["maps"]["s8/4"] = {"k": gh.n_components_, **judge_map(grid_test)}
    grid_map = grid_test / upsample(gh.error_maps(grid[hold_i])).std()
    ks16 = fine[16][2] if 16 in fine else None
    if ks16 is not None:
        rows["maps"]["coarse+s8+s16+s8/4@16"] = {"k": [gm.n_components_, *ks16, gh.n_components_],
                                                 **judge_map(coarse_map + fine[16][1] + grid_map)}
        rows["maps"]["s8+s16+s8/4@16"] = {"k": [*ks16, gh.n_components_], **judge_map(fine[16][1] + grid_map)}
    th, tt = top_mean(fine[None][0]), top_mean(fine[None][1])
    rows["scores"]["map_top"] = auroc(labels, tt)
    fh, (ft, fmaps), kf = free_scores(f10[fit_i], f10[hold_i], f10[test_i])
    rows["scores"]["free"] = auroc(labels, ft)
    rows["maps"]["free"] = {"k": kf, **judge_map(upsample(fmaps))}
    rows["scores"]["global+free"] = auroc(labels, zscore(g_hold, g_test) + zscore(fh, ft))
    rows["scores"]["global+map_top"] = auroc(labels, zscore(g_hold, g_test) + zscore(th, tt))
    rows["scores"]["max(global,free)"] = auroc(labels, log_max(g_hold, fh, g_test, ft))
    rows["choice"] = fit_time_choice(fit_imgs, fit_i.numpy(), hold_i.numpy(), gm, f10[fit_i], g_hold, fh)
    rows["scores"]["chosen at fit"] = rows["scores"]["global" if rows["choice"]["rule"] == "global"
                                                    else "max(global,free)"]
    rows["seconds"] = time.perf_counter() - t0
    print(name, rows, flush=True)
    return rows


def markdown(env: dict, rows: list[dict]) -> str:
    lines = ["# Map features and image-score rules, on aligned and on moved parts", "", header_md(env),
             (__doc__ or "").split("\n\n")[1], ""]
    lines += ["## Maps (pixel AUROC / AUPRO; k = components)", "",
              "| set | " + " | ".join(rows[0]["maps"]) + " |", "|---|" + "---|" * len(rows[0]["maps"])]
    for r in rows:
        cells = []
        for v in r["maps"].values():
            cells.append(f"{v['pixel_auroc']:.3f} / {v['aupro']:.3f} (k {v['k']})" if "aupro" in v else "")
        lines.append(f"| {r['set']} | " + " | ".join(cells) + " |")
    lines += ["", "## Image scores (image AUROC)", "", "| set | " + " | ".join(rows[0]["scores"]) + " |",
              "|---|" + "---|" * len(rows[0]["scores"])]
    for r in rows:
        lines.append(f"| {r['set']} | " + " | ".join(f"{v:.4f}" for v in r["scores"].values()) + " |")
    lines += ["", "## The rule chosen at fit time (AUROC, held-out good against pasted patches)", "",
              "The position-free rule is kept when its gain is at least the margin and its lower bound (the 5th "
              "percentile of the gain over 1000 draws of the held-out pictures with replacement) is above 0.", "",
              "| set | held out | global | max(global,free) | gain's lower bound | kept |", "|---|---|---|---|---|---|"]
    for r in rows:
        c = r["choice"]
        lines.append(f"| {r['set']} | {r['hold']} | {c['auroc_global']:.4f} | {c['auroc_max']:.4f} | "
                     f"{c['gain_lower_bound']:+.4f} | {c['rule']} |")
    return "\n".join(lines) + "\n"


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sets", nargs="+", default=SETS)
    ap.add_argument("--caps", nargs="+", type=int, default=[16, 64])
    args = ap.parse_args()
    torch.set_num_threads(2)
    rows = [study(s, sorted(args.caps)) for s in args.sets]
    env = environment()
    write("map_score_study", {"kind": "map_score_study", "env": env, "rows": rows}, markdown(env, rows))


if __name__ == "__main__":
    main()
