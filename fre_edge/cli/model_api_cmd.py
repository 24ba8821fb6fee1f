"""``fre-edge model-api`` (torch-free)."""

from __future__ import annotations

from pathlib import Path

import click

from .params import output_option


@click.command("model-api")
@click.argument("bundle", type=click.Path(path_type=Path))
@output_option("The folder to write model.xml/.bin into (new, or one fre-edge wrote, with --force).")
@click.option("--force", is_flag=True, help="Replace an existing folder written by fre-edge model-api.")
def command(bundle, output, force):
    """Write BUNDLE as an OpenVINO Model API AnomalyDetection model.

    `model_api.models.Model.create_model(f32_adapter("OUT/model.xml"))` (f32_adapter from
    fre_edge.serve.model_api: on CPUs with bf16, Model API's defaults would run bf16 and move the scores)
    then loads it as an AnomalyDetection wrapper: RGB pictures of any size in; pred_score and the anomaly map
    normalised to [0, 1] with 0.5 at the bundle's thresholds, pred_label and pred_mask as fre-edge decides.
    """
    from ..serve.model_api import write_model_api

    out_dir = output

    xml = write_model_api(bundle, out_dir, force=force)
    click.echo(f"wrote {xml}; load it with model_api.models.Model.create_model(f32_adapter({str(xml)!r})), "
               "f32_adapter from fre_edge.serve.model_api (f32 inference; CPUs with bf16 would run bf16)")
