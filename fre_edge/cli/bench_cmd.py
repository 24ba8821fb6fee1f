"""``fre-edge bench`` (torch-free)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from ..runtime.adapters import BACKENDS, HINTS, PRECISIONS
from .params import FiniteFloat, batch_size_option, remote_detector, server_options


@click.command("bench")
@click.argument("bundle", type=click.Path(path_type=Path))
@click.option("--device", default="CPU", show_default=True, help="OpenVINO device: CPU, GPU, AUTO, ...")
@click.option("--backend", type=click.Choice(BACKENDS), default="openvino", show_default=True,
              help="Which runtime runs the bundle's graph (openvino: the IR; onnxruntime: the ONNX file).")
@click.option("--precision", type=click.Choice(PRECISIONS), default="f32", show_default=True,
              help="Inference precision hint (OpenVINO); the precision actually used is reported.")
@click.option("--mode", type=click.Choice(HINTS), default="latency", show_default=True,
              help="OpenVINO performance hint.")
@batch_size_option(1, "Images per call of the graph.", maximum=256)
@click.option("--duration", type=FiniteFloat(0.1, 3600), default=10.0, show_default=True,
              help="Seconds per measurement (sync and async each).")
@click.option("--threads", type=click.IntRange(1, 1024), default=None, help="Inference threads (default: all).")
@click.option("--backbone-only", is_flag=True, help="Time the truncated backbone alone (no FRE head).")
@click.option("--head-cost", is_flag=True,
              help="Also time the whole graph against the backbone alone in alternating rounds (another "
                   "--duration): what the FRE head adds on this PC (OpenVINO).")
@click.option("--images", "images_dir", type=click.Path(path_type=Path), default=None,
              help="Also measure end-to-end images/s on the image files in this folder (read, resize, infer, "
                   "map; with and without overlays), as `predict` gets them.")
@server_options("Time the bundle's graph on this model server instead, over the network as clients see it")
@click.option("--clients", type=click.IntRange(1, 256), default=None,
              help="Concurrent clients for the async figure (default: with --server 4; locally the runtime's "
                   "own number of requests).")
@click.option("--json", "json_path", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Also write the result as JSON (a new file, or one fre-edge bench wrote with --force).")
@click.option("--force", is_flag=True, help="Replace an existing --json file written by fre-edge bench.")
def command(bundle, device, backend, precision, mode, batch_size, duration, threads, backbone_only, head_cost,
            images_dir, server, model_name, clients, json_path, force):
    """Measure latency (median, mean, p90, p99) and FPS of BUNDLE, sync and async.

    Prints a table with the paper's FPS figures beside this machine's.
    """
    from .. import __version__

    batch = batch_size
    from ..bench import cpu_info, format_table, run_bench, run_images
    from ..errors import FreEdgeError
    from ..runtime import load_backbone_only, load_detector

    if json_path is not None:  # before any work
        from ..outputs import check_output_file

        check_output_file(json_path, kind="bench", force=force, inputs=[bundle, images_dir])
    paths = None
    if images_dir is not None:
        from ..images import find_images

        if backbone_only:
            raise FreEdgeError("--images measures the whole detector; drop --backbone-only")
        if not images_dir.is_dir():
            raise FreEdgeError(f"{images_dir}: no such folder; point --images to a folder of pictures")
        if not (paths := find_images(images_dir)):
            raise FreEdgeError(f"{images_dir}: no images found; point --images to a folder of pictures")
    if head_cost:
        if backbone_only:
            raise FreEdgeError("--head-cost times the whole graph against the backbone; drop --backbone-only")
        if server:
            raise FreEdgeError("--head-cost times local graphs; drop it with --server")
        if backend != "openvino":
            raise FreEdgeError("--head-cost needs the backbone cut out of the graph, which OpenVINO does; "
                               "use --backend openvino")
    if server:
        det = remote_detector(bundle, server, model_name, backend, backbone_only)
        clients = clients or 4
    else:
        load = load_backbone_only if backbone_only else load_detector
        det = load(bundle, backend=backend, device=device, precision=precision, hint=mode, threads=threads,
                   batch=batch)
    result = {
        "kind": "fre-edge bench",
        "command": "fre-edge " + " ".join(sys.argv[1:]),
        "fre_edge_version": __version__,
        "backbone_only": backbone_only,
        "runtime": det.describe(),
        "machine": cpu_info(),
        "bench": run_bench(det, batch=batch, duration=duration, clients=clients),
    }
    if head_cost:
        from ..bench import run_head_cost

        bb = load_backbone_only(bundle, backend=backend, device=device, precision=precision, hint=mode,
                                threads=threads, batch=batch)
        result["head_cost"] = run_head_cost(det, bb, batch=batch, duration=duration)
    if paths:  # a dynamic batch, as predict runs: the last batch of a pass may be short
        e2e = (det if server else
               load_detector(bundle, backend=backend, device=device, precision=precision, hint=mode, threads=threads))
        result["end_to_end"] = [run_images(e2e, paths, batch_size=batch, duration=duration, overlays=o)
                                for o in (False, True)]
    click.echo(format_table(result))
    if json_path:
        from ..outputs import write_text_atomic

        write_text_atomic(json_path, json.dumps(result, indent=2))
