"""The evaluation sets the accuracy studies share (sensitivity, tile_subspaces): the two shared sets and
``mtd_wide``, Magnetic Tile's pictures at least ``WIDE`` times as wide as high (a real long-part set), with the
common grid their metrics are computed on."""

from __future__ import annotations

from ._common import DATASETS

EVAL_HW = (256, 256)  # every map resized (bilinear) and mask (nearest) to this before the metrics
WIDE = 1.5


def dataset(name: str):
    """(fit paths, test samples, summary) of a set: a folder under the shared datasets, or ``mtd_wide``."""
    from fre_edge.fit.data import read_dataset
    from fre_edge.images import picture_hw

    if name != "mtd_wide":
        ds = read_dataset(DATASETS / name)
        return [s.path for s in ds.train], ds.test, ds.summary()
    ds = read_dataset(DATASETS / "magnetic_tile")

    def wide(s):
        h, w = picture_hw(s.path)
        return w >= WIDE * h

    train, test = [s for s in ds.train if wide(s)], [s for s in ds.test if wide(s)]
    return [s.path for s in train], test, {**ds.summary(), "name": "mtd_wide",
                                          "filter": f"width >= {WIDE} x height", "train_images": len(train),
                                          "test_images": len(test)}
