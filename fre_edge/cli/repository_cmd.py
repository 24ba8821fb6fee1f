"""``fre-edge repository`` (torch-free; writes files only)."""

from __future__ import annotations


import click

from .params import output_option


@click.command("repository")
@click.argument("bundles", nargs=-1, required=True)
@output_option("The model repository folder to write (new, or one fre-edge wrote, with --force).")
@click.option("--backend", type=click.Choice(["openvino", "onnxruntime"]), default="openvino", show_default=True,
              help="Which of the bundle's graphs the servers run: the OpenVINO IR or the ONNX file.")
@click.option("--force", is_flag=True, help="Replace an existing repository written by fre-edge repository.")
def command(bundles, output, backend, force):
    """Lay out BUNDLES as a model repository for OpenVINO Model Server and Triton.

    Each BUNDLE is a folder written by `fre-edge export`, named after its folder or NAME=BUNDLE. Writes
    NAME/VERSION/model.xml|.bin (or model.onnx), Triton's NAME/config.pbtxt and OVMS's config.json;
    VERSION is derived from the bundle's digest, so `fre-edge predict --server` can check that the server
    runs the bundle it holds.
    """
    from ..serve.repository import write_repository

    out_dir = output
    from .serve_cmd import _named

    models = write_repository(_named(bundles), out_dir, backend=backend, force=force)
    for m in models:
        click.echo(f"{m['name']} version {m['version']} ({m['backend']}) -> {out_dir / m['name'] / m['version']}")
    click.echo(f"OVMS:   ovms --config_path {out_dir / 'config.json'} --port 9000 --rest_port 8000", err=True)
    click.echo(f"Triton: tritonserver --model-repository {out_dir}", err=True)
    if backend == "openvino":
        from ..serve.repository import BF16_NOTE

        click.echo(f"note: {BF16_NOTE}", err=True)
