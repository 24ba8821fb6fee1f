"""``fre-edge quantize``."""

from __future__ import annotations

import json
from pathlib import Path

import click

from .params import QUIET_HELP, FiniteFloat, output_option


@click.command("quantize")
@click.argument("bundle", type=click.Path(path_type=Path))
@output_option("INT8 bundle folder to write (new, or one fre-edge wrote, with --force).")
@click.option("--calib", "calib_dir", required=True, type=click.Path(path_type=Path),
              help="Folder of good images to calibrate on (e.g. the fitting images, or DATA/train/good).")
@click.option("--calib-size", type=click.IntRange(8, 10_000), default=300, show_default=True,
              help="At most this many images for NNCF's range statistics (the head refit uses every image).")
@click.option("--keep-head/--quantize-head", default=True, show_default=True,
              help="Keep the FRE head in floating point (recommended).")
@click.option("--val", "val_dir", type=click.Path(path_type=Path), default=None,
              help="Labelled data (MVTec or Magnetic Tile layout) for accuracy-controlled quantization.")
@click.option("--max-drop", type=FiniteFloat(0.0, 1.0), default=0.005, show_default=True,
              help="With --val: largest allowed image-AUROC drop (absolute).")
@click.option("--force", is_flag=True, help="Overwrite the output folder.")
@click.option("--quiet", is_flag=True, help=QUIET_HELP)
def command(bundle, output, calib_dir, calib_size, keep_head, val_dir, max_drop, force, quiet):
    """Quantize BUNDLE's OpenVINO model to INT8 with NNCF, calibrated on good images only.

    Writes a new bundle (OpenVINO IR) whose manifest records the precision, the calibration set and
    the accuracy check that was run. `bench`, `predict` and the runtime take it like any other bundle.
    """
    from ..outputs import check_output

    check_output(output, kind="bundle", force=force, inputs=[bundle, calib_dir, val_dir])  # before torch is imported
    from ..fit.data import read_dataset
    from ..export.quantize import quantize_bundle

    calib = [s.path for s in read_dataset(calib_dir, "folder").train]
    validation = read_dataset(val_dir).test if val_dir else None
    meta = quantize_bundle(bundle, output, calib, keep_head=keep_head, subset_size=calib_size, validation=validation,
                           max_drop=max_drop, force=force, progress=not quiet)
    click.echo(json.dumps({"bundle": str(output), "precision": meta["precision"],
                           "quantization": meta["quantization"]}, indent=2))
