"""``fre-edge predict`` (torch-free)."""

from __future__ import annotations

import csv
import io
from contextlib import nullcontext
import json
import sys
from pathlib import Path

import click

from ..runtime.adapters import BACKENDS, PRECISIONS
from ..visualize import OVERLAYS
from .params import POSITIVE, QUIET_HELP, batch_size_option, output_option, remote_detector, server_options

COLUMNS = ["path", "score", "label", "anomalous_pixels", "peak", "bbox", "overlay", "error"]


def _collect(inputs: tuple[Path, ...], out_dir: Path | None) -> list[Path]:
    """The image files named or found under the inputs; never anything inside ``out_dir`` or another
    folder fre-edge wrote."""
    from ..errors import FreEdgeError
    from ..images import find_images

    paths: list[Path] = []
    for p in inputs:
        if p.is_dir():
            found = find_images(p, skip=[out_dir] if out_dir else [])
            if not found:
                raise FreEdgeError(f"{p}: no images found; point to a folder of images")
            paths.extend(found)
        elif p.is_file():
            paths.append(p)
        else:
            raise FreEdgeError(f"{p}: no such file or folder; check the path")
    return paths


def _csv(rows: list[dict]) -> str:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=COLUMNS)
    w.writeheader()
    w.writerows(rows)
    return buf.getvalue()


@click.command("predict")
@click.argument("bundle", type=click.Path(path_type=Path))
@click.argument("images", nargs=-1, required=True, type=click.Path(path_type=Path))
@output_option("Write scores.csv, scores.json and heatmap pictures (JPEG) to this new folder (written whole "
               "when done).", required=False)
@click.option("--backend", type=click.Choice(BACKENDS), default="openvino", show_default=True,
              help="Which runtime runs the bundle's graph (openvino: the IR; onnxruntime: the ONNX file).")
@click.option("--device", default="CPU", show_default=True, help="OpenVINO device: CPU, GPU, AUTO, ...")
@click.option("--precision", type=click.Choice(PRECISIONS), default="f32", show_default=True,
              help="Inference precision (OpenVINO); f32 keeps the scores on the bundle's thresholds.")
@batch_size_option(8, "Images scored per call of the graph.")
@click.option("--threshold", type=POSITIVE, default=None,
              help="Image threshold to use instead of the bundle's (a score above it is anomalous).")
@click.option("--pixel-threshold", type=POSITIVE, default=None,
              help="Pixel threshold for the masks instead of the bundle's.")
@click.option("--overlays", type=click.Choice(OVERLAYS), default="all", show_default=True,
              help="With --output: heatmap pictures (JPEG) of every image, of the anomalous ones only, or none.")
@click.option("--no-overlays", is_flag=True, help="Same as --overlays none.")
@server_options("Run the graph on this model server; pictures are read and resized here, thresholds come from "
                "BUNDLE")
@click.option("--force", is_flag=True, help="Replace an existing --output folder written by fre-edge predict.")
@click.option("--quiet", is_flag=True, help=QUIET_HELP)
def command(bundle, images, output, backend, device, precision, batch_size, threshold, pixel_threshold, overlays,
            no_overlays, server, model_name, force, quiet):
    """Score IMAGES (files or folders) with BUNDLE.

    Prints one line per image (score, good/anomalous). An unreadable image does not stop the run: it gets
    a line on stderr and a row with its error in scores.csv/json, and the other images are scored.
    Exit status: 0 when every image is good, 1 when at least one is anomalous, 2 on bad input (any
    unreadable image included), 3 on an internal error, 130 when interrupted.
    """
    from tqdm.auto import tqdm

    out_dir = output

    from ..errors import FreEdgeError
    from ..outputs import atomic_dir
    from ..runtime import load_detector

    # --output: checked before any work, written to a temporary folder and renamed into place when complete
    output = atomic_dir(out_dir, force, "predictions", inputs=[bundle, *images]) if out_dir else nullcontext()
    det = (remote_detector(bundle, server, model_name, backend) if server else
           load_detector(bundle, backend=backend, device=device, precision=precision))
    if threshold is not None:
        det.image_threshold = threshold
    if pixel_threshold is not None:
        det.pixel_threshold = pixel_threshold
    paths = _collect(images, out_dir)
    with output as tmp:
        rows, errors = _score(det, paths, tmp, batch_size, "none" if no_overlays else overlays, quiet, tqdm)
        if tmp is not None:
            summary = {"kind": "fre-edge predictions", "bundle": str(bundle),
                       "image_threshold": det.image_threshold, "pixel_threshold": det.pixel_threshold,
                       "thresholds_from": "command line" if threshold is not None or pixel_threshold is not None
                       else "bundle", "runtime": det.describe(), "images": rows}
            (tmp / "scores.json").write_text(json.dumps(summary, indent=2))
            (tmp / "scores.csv").write_text(_csv(rows))
    n_bad = sum(r["label"] == "anomalous" for r in rows)
    n_scored = len(rows) - len(errors)
    click.echo(f"{n_bad} of {n_scored} image(s) anomalous (threshold {det.image_threshold:.6g})", err=True)
    if errors:
        where = f" and in {out_dir / 'scores.csv'}" if out_dir else ""
        raise FreEdgeError(f"{len(errors)} of {len(rows)} image(s) could not be read (listed above{where}); "
                           f"replace or remove them")
    sys.exit(1 if n_bad else 0)


def _score(det, paths, tmp, batch_size, overlays, quiet, tqdm):
    """Score every readable image in ``paths``; rows in input order, and {index: error} of the others.

    Reading runs ahead of inference in threads (``iter_predict``); overlay pictures are drawn and written by
    one more thread, off the scoring path.
    """
    from ..visualize import OverlayWriter

    # disable=None: a bar only on a terminal, not in logs or pipes
    bar = tqdm(total=len(paths), unit="img", disable=True if quiet or len(paths) < 2 else None, file=sys.stderr)
    index = {id(p): i for i, p in enumerate(paths)}
    errors, rows = {}, {}

    def unreadable(path, exc):
        if len(paths) == 1:  # a lone image that cannot be read is just a bad input: one error line
            raise exc
        errors[index[id(path)]] = str(exc)
        bar.write(f"error     {exc}", file=sys.stderr)
        bar.update(1)

    with OverlayWriter(tmp, det.pixel_threshold, overlays) as pictures:
        for path, pred in det.iter_predict(paths, batch_size=batch_size, on_error=unreadable):
            i = index[id(path)]
            row = {"path": str(path), **pred.to_dict(), "overlay": pictures.add(i, path, pred), "error": None}
            bar.write(f"{row['label']:9s} {pred.score:12.6g}  {path}", file=sys.stdout)
            rows[i] = row
            bar.update(1)
    bar.close()
    for i, message in errors.items():
        rows[i] = {**dict.fromkeys(COLUMNS), "path": str(paths[i]), "error": message}
    return [rows[i] for i in sorted(rows)], errors
