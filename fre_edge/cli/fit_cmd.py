"""``fre-edge fit``."""

from __future__ import annotations

import json
from pathlib import Path

import click

from ..choices import BACKBONES, DEFAULT_BACKBONE, LAYOUTS, STRATEGIES
from .params import INPUT_SIZE_HELP, QUIET_HELP, FiniteFloat, InputSize, batch_size_option, output_option


def _n_components(ctx, param, value: str) -> float | int:
    try:
        number = int(value) if value.isdigit() else float(value)
    except ValueError:
        number = None
    if number is None or isinstance(number, float) and not 0 < number < 1 or number == 0:
        raise click.BadParameter(f"{value!r}: a variance ratio must lie strictly between 0 and 1, a component "
                                 f"count must be a whole number of 1 or more")
    return number


def _map_layers(value: str | None) -> tuple[str, ...] | None:
    if value is None:
        return None
    return () if value.strip().lower() == "none" else tuple(v.strip() for v in value.split(",") if v.strip())


@click.command("fit")
@click.argument("data", type=click.Path(file_okay=False, path_type=str))
@output_option("Model folder to write (new, or one fre-edge fit wrote, with --force).")
@click.option("--layout", type=click.Choice(LAYOUTS), default="auto",
              show_default=True, help="How DATA is organised (auto: found from its folders).")
@click.option("--split", type=click.Path(exists=True, dir_okay=False), default=None,
              help="Split file for the magnetic_tile layout (default DATA/split.json).")
@click.option("--backbone", type=click.Choice(BACKBONES), default=DEFAULT_BACKBONE, show_default=True,
              help="The pretrained network whose features FRE models.")
@click.option("--layers", default=None, help="Comma-separated layer names (default: the backbone's).")
@click.option("--input-size", type=InputSize(), default="auto", show_default=True, help=INPUT_SIZE_HELP)
@click.option("--tiles", default=None, metavar="RxC",
              help="Score each picture as R x C overlapping tiles of the input size, all by the one graph (for "
                   "pictures much larger than the input; one subspace shared by every tile, image score the "
                   "largest tile's, map stitched). With --input-size auto the tile is shaped so the grid has the "
                   "pictures' aspect.")
@click.option("--tile-overlap", type=FiniteFloat(0, 0.5), default=0.25, show_default=True,
              help="With --tiles: the fraction of a tile shared with its neighbour.")
@click.option("--pool", type=click.IntRange(1, 64), default=2, show_default=True,
              help="Average-pooling kernel on the features (1: none; larger: coarser map, fewer dimensions).")
@click.option("--map-layers", default=None, metavar="LAYERS|none",
              help="Layers of the map's own heads, comma-separated (default: the backbone's stride-8 layer and the "
                   "score's layer, unpooled); none: the map comes from the score's subspace.")
@click.option("--map-pool", type=click.IntRange(1, 64), default=1, show_default=True,
              help="Average-pooling kernel on the map heads' features.")
@click.option("--map-components", default="16", show_default=True, callback=_n_components,
              help="Components of each map layer's unpooled head: a count, or a variance ratio in (0, 1).")
@click.option("--map-grid/--no-map-grid", default=True, show_default=True,
              help="Also pool each map layer shallower than the score's to the score's grid (--variance of it): "
                   "the map then sees large, faint changes that the deep layer ignores.")
@click.option("--position-free", type=click.Choice(("auto", "on", "off")), default="auto", show_default=True,
              help="Also score each picture by its worst local patch against one subspace of patches shared by "
                   "every location (catches small defects on parts that move in the fixture); auto keeps it where "
                   "it tells held-out good pictures from pasted-in defects clearly better.")
@click.option("--variance", "n_components", default="0.97", show_default=True, callback=_n_components,
              help="Variance ratio to keep (float in (0,1)) or a component count (int).")
@click.option("--strategy", type=click.Choice(STRATEGIES), default="auto",
              show_default=True, help="How the subspace is fitted (auto: from image count, size and memory).")
@click.option("--ae-epochs", type=click.IntRange(1, 100_000), default=250, show_default=True,
              help="Training epochs of --strategy autoencoder (the paper's 250).")
@click.option("--holdout", type=FiniteFloat(0, 0.9, max_open=True), default=0.1, show_default=True,
              help="Fraction of good images kept out to set thresholds.")
@click.option("--blur", "blur_sigma", type=FiniteFloat(min=0), default=0.0, show_default=True,
              help="Gaussian blur sigma on the anomaly map, in pixels (0: none, as the paper).")
@batch_size_option(16, "Images per forward pass of the backbone while fitting.")
@click.option("--weights", type=click.Path(exists=True, dir_okay=False), default=None,
              help="Backbone weights file (torchvision backbones).")
@click.option("--memory-budget", "memory_budget_gb", type=FiniteFloat(0.1, 4096), default=4.0, show_default=True,
              help="GB the subspace fit may use per layer; auto streams (covariance) when N x D exceeds it.")
@click.option("--dask", "address", default=None, metavar="ADDRESS",
              help="Run the feature passes on Dask: local:N (N worker processes here) or tcp://SCHEDULER:8786 "
                   "(its workers must see DATA at the same path). Streams: memory D x D per layer, any N.")
@click.option("--partition-size", type=click.IntRange(1, 1_000_000), default=None,
              help="With --dask: images per task (default: about four tasks per worker, since each task's "
                   "result is the D x D sums).")
@click.option("--force", is_flag=True, help="Overwrite the output folder.")
@click.option("--quiet", is_flag=True, help=QUIET_HELP)
def command(data, output, layout, split, backbone, layers, input_size, tiles, tile_overlap, pool, map_layers,
            map_pool, map_components, map_grid, position_free, n_components,
            strategy, ae_epochs, holdout, blur_sigma, batch_size, weights, memory_budget_gb, address, partition_size,
            force, quiet):
    """Fit FRE on the good images of DATA and write a model folder.

    DATA is an MVTec AD category folder (train/good is used), a Magnetic Tile folder with split.json,
    or a plain folder of good images.
    """
    from ..outputs import check_output

    check_output(output, kind="model", force=force, inputs=[data, split, weights])  # before torch is imported
    if not Path(data).is_dir():
        from ..errors import FreEdgeError

        raise FreEdgeError(f"{data}: no such folder; check the path")
    if address:
        from ..cluster.engine import check_address

        check_address(address)
    from . import echo_warnings
    from ..fit.data import read_dataset
    from ..fit import FitConfig, fit_fre
    from ..fit.persist import save_model
    from ..images import size_json
    from ..cluster.engine import dask_client
    from contextlib import nullcontext

    cfg = FitConfig(backbone=backbone, layers=tuple(layers.split(",")) if layers else None, input_size=input_size,
                    pool=pool, n_components=n_components, strategy=strategy, holdout=holdout,
                    blur_sigma=blur_sigma, batch_size=batch_size, weights=weights, ae_epochs=ae_epochs,
                    memory_budget_gb=memory_budget_gb, tiles=tiles, tile_overlap=tile_overlap,
                    map_layers=_map_layers(map_layers), map_pool=map_pool,
                    map_components=map_components, map_grid=map_grid, position_free=position_free).validate()
    if address:
        from ..cluster.engine import check_address

        check_address(address)  # before the data is read
    ds = read_dataset(data, layout, split)
    train = [str(Path(s.path).resolve()) for s in ds.train]
    with (dask_client(address) if address else nullcontext()) as client:
        fitted = fit_fre(train, cfg, progress=not quiet, data_summary=ds.summary(), client=client,
                         partition_size=partition_size)
    save_model(fitted, output, force=force)
    info = fitted.info
    echo_warnings(info)
    click.echo(json.dumps({"model": str(output), "backbone": cfg.backbone, "layers": list(cfg.layers),
                           "map_layers": list(cfg.map_layers),
                           "map_grid_heads": [{"layer": layer, "pool": p} for layer, p in cfg.grid_heads],
                           "input_size": size_json(fitted.config.input_size),
                           "tiles": None if fitted.tiling is None else fitted.tiling.to_json(),
                           "n_components": info["n_components"],
                           "thresholds": {k: info["thresholds"][k] for k in ("image", "pixel", "source")},
                           "fitted_by": info["fitted_by"], "timings_s": info["timings_s"]}, indent=2))
