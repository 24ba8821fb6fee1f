"""``fre-edge archive`` (torch-free; --dask needs the dask extra)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from .params import QUIET_HELP, batch_size_option, output_option


@click.command("archive")
@click.argument("bundle", type=click.Path(path_type=Path))
@click.argument("images", nargs=-1, required=True, type=click.Path(path_type=Path))
@output_option("Run folder: scores/part-*.parquet, archive.json, summary.json. Run again to resume.")
@click.option("--dask", "address", default=None, metavar="ADDRESS",
              help="local:N (N worker processes here) or tcp://SCHEDULER:8786; default: this process.")
@click.option("--partition-size", type=click.IntRange(1, 1_000_000), default=256, show_default=True,
              help="Images per partition: the unit of work, of resuming and of one Parquet file.")
@batch_size_option(8, "Images scored per call of the graph.")
@click.option("--quiet", is_flag=True, help=QUIET_HELP)
def command(bundle, images, output, address, partition_size, batch_size, quiet):
    """Score an archive of IMAGES (files or folders) with BUNDLE, partition by partition, resumably.

    Writes one Parquet file per partition (path, score, label, anomalous_pixels, peak, bbox, error) and,
    when all are done, summary.json. A run stopped half-way and started again with the same arguments
    scores only the partitions not yet written. With --dask the workers read the bundle and the images
    from the same paths: use a shared file system. Exit status as predict: 0 all good, 1 some anomalous,
    2 some unreadable or bad input.
    """
    from contextlib import nullcontext

    out_dir = output

    from tqdm.auto import tqdm

    from ..cluster.archive import partition_file, plan, read_scores, score_partition
    from ..cluster.engine import check_address, dask_client, run_partitions
    from ..errors import FreEdgeError
    from ..outputs import write_text_atomic
    from ..runtime.bundle import read_manifest
    from .predict_cmd import _collect

    try:
        import pyarrow  # noqa: F401
    except ImportError:
        raise FreEdgeError('fre-edge archive writes Parquet; run: pip install "fre-edge[dask]"') from None
    if address:
        check_address(address)  # before anything is written
    if not (bundle / "manifest.json").is_file():
        raise FreEdgeError(f"{bundle}: no bundle folder; pass the folder written by `fre-edge export`")
    from ..outputs import check_not_input, check_writable

    check_not_input(out_dir, [bundle, *images])  # a run folder is resumed, so an existing one is not refused here
    check_writable(out_dir)
    paths = [p.resolve() for p in _collect(images, out_dir)]

    # the cluster first: an unreachable scheduler leaves no run folder behind
    with (dask_client(address) if address else nullcontext()) as client:
        run, todo = plan(bundle.resolve(), paths, out_dir, partition_size)
        jobs = [(str(bundle.resolve()), run["digest"], names, str(partition_file(out_dir.resolve(), i)), batch_size)
                for i, names in todo]
        done = run["partitions"] - len(todo)
        if done:
            click.echo(f"resuming: {done} of {run['partitions']} partition(s) already scored", err=True)
        bar = tqdm(total=run["partitions"], initial=done, unit="part", disable=True if quiet else None,
                   file=sys.stderr)
        for _ in run_partitions(score_partition, jobs, client):
            bar.update(1)
    bar.close()
    table = read_scores(out_dir)
    labels = table.column("label").to_pylist()
    errors = sum(e is not None for e in table.column("error").to_pylist())
    th = read_manifest(bundle, verify=False)["thresholds"]
    summary = {"kind": "fre-edge archive summary", "bundle": str(bundle), "digest": run["digest"],
               "images": table.num_rows, "anomalous": labels.count("anomalous"), "good": labels.count("good"),
               "unreadable": errors, "image_threshold": th["image"], "pixel_threshold": th["pixel"],
               "partitions": run["partitions"], "engine": address or "this process"}
    if table.num_rows != run["images"]:
        raise FreEdgeError(f"{out_dir}: {table.num_rows} rows for {run['images']} images (a partition file was "
                           f"changed by hand?); remove scores/ and run again")
    write_text_atomic(out_dir / "summary.json", json.dumps(summary, indent=2) + "\n")
    click.echo(f"{summary['anomalous']} of {summary['images'] - errors} image(s) anomalous, {errors} unreadable; "
               f"scores in {out_dir / 'scores'}", err=True)
    if errors:
        raise FreEdgeError(f"{errors} image(s) could not be read (their rows hold the error); replace or remove them")
    sys.exit(1 if summary["anomalous"] else 0)
