"""``fre-edge predict`` (torch-free)."""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path

import click

from ..runtime.adapters import BACKENDS, PRECISIONS


def _collect(inputs: tuple[Path, ...]) -> list[Path]:
    from ..errors import FreEdgeError
    from ..images import is_image_file

    paths: list[Path] = []
    for p in inputs:
        if p.is_dir():
            found = sorted(q for q in p.rglob("*") if q.is_file() and is_image_file(q))
            if not found:
                raise FreEdgeError(f"{p}: no images found; point to a folder of images")
            paths.extend(found)
        elif p.is_file():
            paths.append(p)
        else:
            raise FreEdgeError(f"{p}: no such file or folder; check the path")
    return paths


@click.command("predict")
@click.argument("bundle", type=click.Path(path_type=Path))
@click.argument("images", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Write scores.csv, scores.json and overlay PNGs here.")
@click.option("--backend", type=click.Choice(BACKENDS), default="openvino", show_default=True)
@click.option("--device", default="CPU", show_default=True, help="OpenVINO device: CPU, GPU, AUTO, ...")
@click.option("--precision", type=click.Choice(PRECISIONS), default="f32", show_default=True)
@click.option("--batch-size", type=click.IntRange(1, 1024), default=8, show_default=True)
@click.option("--threshold", type=click.FloatRange(min=0, min_open=True), default=None,
              help="Image threshold to use instead of the bundle's (a score above it is anomalous).")
@click.option("--pixel-threshold", type=click.FloatRange(min=0, min_open=True), default=None,
              help="Pixel threshold for the masks instead of the bundle's.")
@click.option("--no-overlays", is_flag=True, help="Scores only, no pictures.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
def command(bundle, images, out_dir, backend, device, precision, batch_size, threshold, pixel_threshold, no_overlays,
            quiet):
    """Score IMAGES (files or folders) with BUNDLE.

    Prints one line per image (score, good/anomalous). Exit status: 0 when every image is good, 1 when
    at least one is anomalous, 2 on bad input.
    """
    from tqdm.auto import tqdm

    from ..runtime import load_detector

    det = load_detector(bundle, backend=backend, device=device, precision=precision)
    if threshold is not None:
        det.image_threshold = threshold
    if pixel_threshold is not None:
        det.pixel_threshold = pixel_threshold
    paths = _collect(images)
    rows = []
    if out_dir:
        out_dir.mkdir(parents=True, exist_ok=True)
    # disable=None: a bar only on a terminal, not in logs or pipes
    bar = tqdm(total=len(paths), unit="img", disable=True if quiet or len(paths) < 2 else None, file=sys.stderr)
    from ..images import load_image

    # each image is read once: the same array feeds the model and the overlay picture
    images = (load_image(p) for p in paths)
    for path, (image, pred) in zip(paths, det.iter_predict(images, batch_size=batch_size)):
        row = {"path": str(path), **pred.to_dict()}
        rows.append(row)
        bar.write(f"{row['label']:9s} {pred.score:12.6g}  {path}", file=sys.stdout)
        if out_dir and not no_overlays:
            from ..visualize import save_panel

            save_panel(out_dir / f"{len(rows) - 1:04d}_{path.stem}.png", image, pred.anomaly_map,
                       2 * det.pixel_threshold, title=f"{path.name} score={pred.score:.4g} {row['label']}")
        bar.update(1)
    bar.close()
    if out_dir:
        summary = {"bundle": str(bundle), "image_threshold": det.image_threshold,
                   "pixel_threshold": det.pixel_threshold,
                   "thresholds_from": "command line" if threshold is not None or pixel_threshold is not None else "bundle",
                   "runtime": det.describe(), "images": rows}
        (out_dir / "scores.json").write_text(json.dumps(summary, indent=2))
        with open(out_dir / "scores.csv", "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(rows[0]))
            w.writeheader()
            w.writerows(rows)
    n_bad = sum(r["label"] == "anomalous" for r in rows)
    click.echo(f"{n_bad} of {len(rows)} image(s) anomalous (threshold {det.image_threshold:.6g})", err=True)
    sys.exit(1 if n_bad else 0)
