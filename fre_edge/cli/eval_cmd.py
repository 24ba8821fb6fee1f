"""``fre-edge eval``."""

from __future__ import annotations

import json
from pathlib import Path

import click

from ..choices import LAYOUTS
from .params import QUIET_HELP, batch_size_option


@click.command("eval")
@click.argument("model_dir", type=click.Path(path_type=str))
@click.argument("data", type=click.Path(file_okay=False, path_type=str))
@click.option("--layout", type=click.Choice(LAYOUTS), default="auto",
              show_default=True, help="How DATA is organised (auto: found from its folders).")
@click.option("--split", type=click.Path(exists=True, dir_okay=False), default=None,
              help="Split file for the magnetic_tile layout.")
@click.option("--json", "json_path", type=click.Path(dir_okay=False), default=None,
              help="Write the metrics as JSON here (default MODEL_DIR/eval.json).")
@click.option("--pictures", "pictures_dir", type=click.Path(file_okay=False), default=None,
              help="Folder for heatmap pictures (default MODEL_DIR/eval_pictures).")
@click.option("-n", "--num-pictures", type=click.IntRange(min=0), default=8, show_default=True,
              help="Heatmap pictures to write: the highest- and lowest-scored test images of each kind.")
@batch_size_option(16, "Images scored per call of the model.")
@click.option("--force", is_flag=True, help="Replace an existing --json file or --pictures folder written by "
                                            "fre-edge eval (the defaults inside MODEL_DIR are always replaced).")
@click.option("--quiet", is_flag=True, help=QUIET_HELP)
def command(model_dir, data, layout, split, json_path, pictures_dir, num_pictures, batch_size, force, quiet):
    """Evaluate MODEL_DIR (a `fre-edge fit` folder, or an exported bundle of any precision, INT8
    included, run with OpenVINO f32) on the test images of DATA.

    Prints image AUROC, pixel AUROC and AUPRO (when masks exist) and what the image threshold does on
    these images (with the thresholds that would catch every defect or reject no good image; use one
    with `fre-edge predict --threshold`), writes them as JSON, and draws scores.png (every score by
    kind, with the threshold) and heatmap pictures (image | mask | heatmap | outline) for a selection
    of test images.
    """
    from ..outputs import atomic_dir, check_output, check_output_file, write_text_atomic

    # every output checked before any work; the defaults are the model folder's own eval outputs
    inputs = [model_dir, data, split]
    own_json, own_pictures = Path(model_dir) / "eval.json", Path(model_dir) / "eval_pictures"
    if json_path and Path(json_path).resolve() == own_json.resolve():
        json_path = None
    if pictures_dir and Path(pictures_dir).resolve() == own_pictures.resolve():
        pictures_dir = None
    json_path = (check_output_file(json_path, kind="eval", force=force, inputs=inputs) if json_path else
                 check_output_file(own_json, kind="eval", force=True, inputs=[data]))
    if num_pictures > 0:
        pictures = ((pictures_dir, force, inputs) if pictures_dir else
                    (own_pictures, True, [data]))
        check_output(pictures[0], kind="pictures", force=pictures[1], inputs=pictures[2])
    if not Path(data).is_dir():  # before torch is imported
        from ..errors import FreEdgeError

        raise FreEdgeError(f"{data}: no such folder; check the path")
    from ..fit.data import read_dataset
    from ..fit.evaluate import evaluate, write_pictures
    from ..fit.persist import load_model
    from ..runtime import load_detector
    from ..runtime.bundle import MANIFEST

    if (Path(model_dir) / MANIFEST).is_file():
        fitted = load_detector(model_dir)
    else:
        fitted = load_model(model_dir)
    ds = read_dataset(data, layout, split)
    metrics, scores, maps = evaluate(fitted, ds.test, batch_size=batch_size, progress=not quiet)
    metrics = {"kind": "fre-edge eval", **metrics, "model": str(model_dir), "data": ds.summary()}
    pictures_dir = Path(pictures_dir) if pictures_dir else own_pictures
    if num_pictures > 0:
        with atomic_dir(pictures[0], pictures[1], "pictures", inputs=pictures[2]) as tmp:
            written = write_pictures(fitted, ds.test, scores, maps, tmp, num_pictures)
            (tmp / "pictures.json").write_text(json.dumps({"kind": "fre-edge eval pictures", "model": str(model_dir),
                                                           "pictures": [p.name for p in written]}, indent=2))
        metrics["pictures"] = [str(pictures_dir / p.name) for p in written]
    write_text_atomic(json_path, json.dumps(metrics, indent=2))
    show = {k: metrics[k] for k in ("image_auroc", "pixel_auroc", "aupro") if k in metrics}
    click.echo("  ".join(f"{k}={v:.4f}" for k, v in show.items()))
    at, ops = metrics.get("at_threshold"), metrics.get("operating_points")
    if at and ops:
        c, r = ops["catch_every_defect"], ops["reject_no_good_image"]
        chart = f"; chart: {pictures_dir / 'scores.png'}" if num_pictures > 0 else ""
        click.echo(f"threshold {at['threshold']:.6g}: {at['false_reject_rate']:.1%} of good images rejected, "
                   f"{at['miss_rate']:.1%} of defects missed; to catch every defect: {c['threshold']:.6g} "
                   f"({c['false_reject_rate']:.1%} rejected); to reject no good image: {r['threshold']:.6g} "
                   f"({r['miss_rate']:.1%} missed){chart}")
    click.echo(f"metrics: {json_path}")
