"""What a fit is asked for (:class:`FitConfig`, checked by ``validate``) and the detector those settings build:
the backbone cut at the layers the heads read, the heads, the pre-processing and the pooling. Fitting in one
process (:mod:`.pipeline`) and the streamed passes on Dask workers (:mod:`.passes`) both build from here."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from .backbones import DEFAULT_BACKBONE, create_backbone, default_map_layers, get_spec, resolve_layers
from ..errors import FreEdgeError
from ..images import input_hw, size_text
from .model import FREDetector, FREHead
from ..tiling import Tiling, check_overlap, parse_grid
from .pca import check_n_components, check_strategy

# components of each map head: the map needs the few directions good parts vary along, not 97% of the variance
# (benchmarks/results/map_score_study.md: 16 components localise as well as 97% on every set measured there)
MAP_COMPONENTS = 16
POSITION_FREE = ("auto", "on", "off")


@dataclass
class FitConfig:
    backbone: str = DEFAULT_BACKBONE
    layers: tuple[str, ...] | None = None
    input_size: int | tuple[int, int] | str | None = "auto"  # a side, (height, width), "HxW" or "auto"
    pool: int = 2
    n_components: float | int = 0.97
    strategy: str = "auto"
    holdout: float = 0.1
    blur_sigma: float = 0.0
    batch_size: int = 16
    seed: int = 0
    pretrained: bool = True
    weights: str | None = None
    memory_budget_gb: float = 4.0
    ae_epochs: int = 250  # the autoencoder strategy's training epochs (the paper's)
    tiles: str | tuple[int, int] | None = None  # "RxC": score R x C overlapping tiles of input_size (..tiling)
    tile_overlap: float = 0.25  # fraction of a tile shared with its neighbour
    # the map's own heads, added to the score heads' map: None = the backbone's default map layers
    # (.backbones.default_map_layers), () = none (the map then comes from the score's subspace alone); unpooled
    # by default, few components each
    map_layers: tuple[str, ...] | None = None
    map_pool: int = 1
    map_components: float | int = MAP_COMPONENTS
    # the map from a pyramid of its layers: each map layer shallower than the score's also pooled to the score's
    # grid (the score's share of the variance), as the score's own layer is; False: the score's coarse map and the
    # map layers' unpooled maps only (how models fitted before this setting made their map)
    map_grid: bool = True
    # the image score also from one subspace of local patches shared by every location (.model.LocalHead): "on",
    # "off", or "auto": kept where it tells good pictures from pasted defects clearly better (.position_free)
    position_free: str = "auto"

    @property
    def memory_budget_bytes(self) -> int:
        return int(self.memory_budget_gb * (1 << 30))

    def validate(self) -> "FitConfig":
        spec = get_spec(self.backbone)
        self.layers = resolve_layers(spec, self.layers)
        self.map_layers = (default_map_layers(spec, self.layers) if self.map_layers is None
                           else resolve_layers(spec, self.map_layers, empty_ok=True))
        if self.map_pool < 1:
            raise FreEdgeError(f"map pool={self.map_pool}; the pooling kernel must be 1 (none) or more")
        self.map_components = check_n_components(self.map_components)
        if self.position_free not in POSITION_FREE:
            raise FreEdgeError(f"position_free={self.position_free!r}; use one of {', '.join(POSITION_FREE)}")
        if self.input_size is None or (isinstance(self.input_size, str) and self.input_size.lower() == "auto"):
            self.input_size = "auto"  # resolved from the fitting images by fit_fre (.sizing)
        else:
            hw = input_hw(self.input_size)
            if not all(32 <= x <= 2048 for x in hw):
                raise FreEdgeError(f"input size {size_text(hw)} is out of range; use 32 to 2048 pixels a side")
            self.input_size = hw
        if self.pool < 1:
            raise FreEdgeError(f"pool={self.pool}; the pooling kernel must be 1 (none) or more")
        if not 0.0 <= self.holdout < 0.9:
            raise FreEdgeError(f"holdout={self.holdout}; use a fraction in [0, 0.9), e.g. 0.1")
        check_strategy(self.strategy)
        if not (isinstance(self.blur_sigma, (int, float)) and math.isfinite(self.blur_sigma) and self.blur_sigma >= 0):
            raise FreEdgeError(f"blur sigma {self.blur_sigma!r}; use a finite number, 0 (no blur) or more")
        self.n_components = check_n_components(self.n_components)
        if isinstance(self.ae_epochs, bool) or not isinstance(self.ae_epochs, int) or self.ae_epochs < 1:
            raise FreEdgeError(f"ae_epochs={self.ae_epochs!r}; use a whole number of epochs, 1 or more")
        if self.batch_size < 1:
            raise FreEdgeError(f"batch size {self.batch_size}; use 1 or more")
        if self.tiles is not None:
            self.tiles = parse_grid(self.tiles)
            check_overlap(self.tile_overlap)
        return self

    @property
    def tiling(self) -> Tiling | None:
        """The tiling of a fitted config (input size resolved), or None."""
        return None if self.tiles is None else Tiling(self.tiles, self.input_size, self.tile_overlap)

    @property
    def grid_heads(self) -> tuple[tuple[str, int], ...]:
        """(layer, pooling kernel) of each map layer shallower than the score's first layer, pooled to the score's
        grid (``map_grid``): its features averaged over each cell of the score's grid see large, faint changes
        of texture or shade that the deeper layer is made to ignore and a single location cannot tell."""
        if not (self.map_grid and self.map_layers):
            return ()
        spec = get_spec(self.backbone)
        cell = spec.layers[self.layers[0]].stride * self.pool
        out = []
        for layer in self.map_layers:
            stride = spec.layers[layer].stride
            if layer not in self.layers and stride < cell and cell % stride == 0:
                out.append((layer, cell // stride))
        return tuple(out)

    @property
    def head_layers(self) -> tuple[str, ...]:
        """The layer each head reads: the score's heads, then the map's (its layers, then their grid heads)."""
        return tuple(self.layers) + tuple(self.map_layers) + tuple(layer for layer, _ in self.grid_heads)

    @property
    def head_pools(self) -> tuple[int, ...]:
        return ((self.pool,) * len(self.layers) + (self.map_pool,) * len(self.map_layers)
                + tuple(p for _, p in self.grid_heads))

    @property
    def head_components(self) -> tuple[float | int, ...]:
        """What each head keeps: ``n_components`` for the score's and the grid heads, ``map_components`` for the
        map layers' own (unpooled) heads."""
        return ((self.n_components,) * len(self.layers) + (self.map_components,) * len(self.map_layers)
                + (self.n_components,) * len(self.grid_heads))

    @property
    def map_head_pools(self) -> list[int]:
        """The pooling kernel of each map head (the map layers', then the grid heads'), as the bundle records it."""
        return list(self.head_pools[len(self.layers):])

    @property
    def backbone_layers(self) -> tuple[str, ...]:
        """Every layer the heads read, once each."""
        return tuple(dict.fromkeys(self.head_layers))

    @property
    def head_inputs(self) -> list[tuple[int, int]]:
        """Per head: (index into the backbone's outputs, pooling kernel)."""
        names = self.backbone_layers
        return [(names.index(layer), p) for layer, p in zip(self.head_layers, self.head_pools)]

    @property
    def local_input(self) -> int | None:
        """The backbone output the position-free head reads (the score's first layer, unpooled), or None."""
        return self.backbone_layers.index(self.layers[0]) if self.position_free != "off" else None

    @property
    def score_heads(self) -> int | None:
        """How many leading heads make the score (None: every head does); every head adds to the map."""
        return len(self.layers) if self.map_layers else None


def check_pool(cfg: FitConfig) -> None:
    """Refuse a pooling kernel wider than a layer's feature map at the input size (nothing would be left)."""
    spec = get_spec(cfg.backbone)
    for layer, pool in zip(cfg.head_layers, cfg.head_pools):
        stride = spec.layers[layer].stride
        grid = [x // stride for x in input_hw(cfg.input_size)]
        if min(grid) < pool:
            opt = "--pool" if layer in cfg.layers and pool == cfg.pool else "--map-pool"
            raise FreEdgeError(f"{opt} {pool} is wider than {layer}'s {grid[0]} x {grid[1]} feature map at the "
                               f"{size_text(input_hw(cfg.input_size))} input; use {opt} {max(1, min(grid))} or less, "
                               f"or a larger --input-size")


def assemble_detector(cfg: FitConfig, backbone, heads, fusion=None, local=None, local_norm=None) -> FREDetector:
    """The whole detector from a built backbone and its FRE heads (and position-free head), with cfg's
    pre-processing and pooling."""
    spec = get_spec(cfg.backbone)
    return FREDetector(backbone, heads, input_size=cfg.input_size, mean=spec.mean, std=spec.std,
                       pool=cfg.pool, blur_sigma=cfg.blur_sigma, fusion=fusion, head_inputs=cfg.head_inputs,
                       score_heads=cfg.score_heads, local=local, local_norm=local_norm,
                       local_input=cfg.local_input).eval()


def shell_of(cfg: FitConfig):
    """(backbone-only detector, per-head feature shapes, per-head feature counts) of these settings."""
    shell = build_detector(cfg, [], [])
    feats = shell.features(torch.zeros(1, *cfg.input_size, 3, dtype=torch.uint8))[: len(cfg.head_layers)]
    shapes = [tuple(f.shape[1:]) for f in feats]
    return shell, shapes, [int(np.prod(s)) for s in shapes]


def build_detector(cfg: FitConfig, subspaces, shapes, fusion=None, local=None, local_norm=None) -> FREDetector:
    backbone = create_backbone(cfg.backbone, cfg.backbone_layers, input_size=cfg.input_size,
                               pretrained=cfg.pretrained, weights=cfg.weights)
    return assemble_detector(cfg, backbone, [FREHead(s, shape) for s, shape in zip(subspaces, shapes)], fusion,
                             local, local_norm)
