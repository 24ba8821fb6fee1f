"""``fre-edge export``."""

from __future__ import annotations

import json
from pathlib import Path

import click

from ..choices import BACKBONES, DEFAULT_BACKBONE, DEFAULT_BOUND, HEAD_FORMS, HEAD_WEIGHTS
from .params import INPUT_SIZE_HELP, QUIET_HELP, InputSize, output_option


@click.command("export")
@click.argument("source", type=click.Path(path_type=Path))
@output_option("Bundle folder to write (new, or one fre-edge wrote, with --force).")
@click.option("--format", "formats", default="openvino,onnx", show_default=True,
              help="Which graphs to write, comma-separated: openvino (IR), onnx.")
@click.option("--fp16", is_flag=True, help="Store the OpenVINO IR weights as FP16 (half the size).")
@click.option("--head-form", type=click.Choice(HEAD_FORMS), default="auto", show_default=True,
              help="How the graph computes the FRE head; same results, different speed. auto: fastest at batch 1; "
                   "reconstruct: often faster for batches of 8 or more (measure with fre-edge bench).")
@click.option("--head-weights", type=click.Choice(HEAD_WEIGHTS), default="f32", show_default=True,
              help="int8: store the head's components as INT8 in the OpenVINO IR (a quarter of the bytes the head "
                   "reads; scores move slightly, so it needs --check-images and --format openvino; `fre-edge bench "
                   "--head-cost` tells whether the head is worth it on your PC).")
@click.option("--check-images", type=click.Path(path_type=Path, exists=True, file_okay=False),
              help="With --head-weights int8: a folder of good pictures the model was NOT fitted on; the export is "
                   "refused if INT8 weights move any of their scores by more than --score-bound.")
@click.option("--score-bound", type=click.FloatRange(min=0, max=1, min_open=True, max_open=True),
              default=DEFAULT_BOUND, show_default=True,
              help="With --head-weights int8: the largest relative score change allowed on --check-images.")
@click.option("--backbone", type=click.Choice(BACKBONES), default=DEFAULT_BACKBONE, show_default=True,
              help="One-step form only: backbone to fit with.")
@click.option("--input-size", type=InputSize(), default="auto", show_default=True,
              help="One-step form only: " + INPUT_SIZE_HELP)
@click.option("--force", is_flag=True, help="Overwrite the output folder.")
@click.option("--quiet", is_flag=True, help=QUIET_HELP)
def command(source, output, formats, fp16, head_form, head_weights, check_images, score_bound, backbone,
            input_size, force, quiet):
    """Export SOURCE as one OpenVINO IR + ONNX graph with its manifest.

    SOURCE is a model folder written by `fre-edge fit`, or (one-step form) a folder of good images,
    which is fitted with default settings first. The graph takes uint8 RGB images [N, H, W, 3] at the
    model's input size and returns `score` [N] and `anomaly_map` [N, H, W].
    """
    from . import echo_warnings
    from ..errors import FreEdgeError
    from ..outputs import check_output

    check_output(output, kind="bundle", force=force, inputs=[source])  # before torch is imported
    checks = []
    if head_weights == "int8":
        from ..images import find_images

        if check_images is None:
            raise FreEdgeError("--head-weights int8 needs --check-images DIR: good pictures the model was not "
                               "fitted on, to check the INT8 scores against the float ones")
        checks = find_images(check_images)
    elif check_images is not None:
        raise FreEdgeError("--check-images applies to --head-weights int8 only; drop it")
    fmt = tuple(f.strip() for f in formats.split(",") if f.strip())
    if (source / "manifest.json").is_file():
        raise FreEdgeError(f"{source} is a bundle already; export takes the `fre-edge fit` folder it came from, or "
                           f"a folder of good pictures")
    from ..export import export_bundle
    from ..fit.persist import SETTINGS, load_model

    if (source / SETTINGS).is_file():
        if input_size != "auto":
            raise FreEdgeError("--input-size applies to the one-step form (a folder of good images); a model "
                               "folder keeps the size it was fitted at: drop --input-size or fit again")
        fitted = load_model(source)
    elif source.is_dir():
        from ..fit.data import read_dataset
        from ..fit import FitConfig, fit_fre

        ds = read_dataset(source)
        fitted = fit_fre([s.path for s in ds.train], FitConfig(backbone=backbone, input_size=input_size),
                         progress=not quiet, data_summary=ds.summary())
        echo_warnings(fitted.info)
    else:
        raise FreEdgeError(f"{source}: no such model or image folder; pass a `fre-edge fit` output or good images")
    manifest = export_bundle(fitted, output, formats=fmt, fp16=fp16, head_form=head_form, force=force,
                             head_weights=head_weights, check_images=checks, bound=score_bound)
    click.echo(json.dumps({"bundle": str(output), "files": manifest["files"], "precision": manifest["precision"],
                           "head_forms": manifest["head_forms"],
                           **({"head_weights": manifest["head_weights"]} if "head_weights" in manifest else {}),
                           "thresholds": {k: manifest["thresholds"][k] for k in ("image", "pixel")}}, indent=2))
