"""Dataset readers: MVTec AD layout, Magnetic Tile Defects with a split file, a plain folder of images.

Readers only list files (no pixels are read here): each returns a :class:`Dataset` with ``train``
(good images to fit on) and ``test`` (good and defective images, with masks where known).
"""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass, field
from pathlib import Path

from ..choices import LAYOUTS
from ..errors import FreEdgeError
from ..images import IMAGE_SUFFIXES, find_images, is_image_file
from ..outputs import FreEdgeWarning


@dataclass(frozen=True)
class Sample:
    path: Path
    label: int = 0  # 0 good, 1 anomalous
    mask: Path | None = None  # ground-truth mask (None: unknown, or all-good)
    defect: str = "good"


@dataclass
class Dataset:
    name: str
    root: Path
    layout: str
    train: list[Sample] = field(default_factory=list)
    test: list[Sample] = field(default_factory=list)

    def summary(self) -> dict:
        n_bad = sum(s.label for s in self.test)
        return {
            "name": self.name,
            "layout": self.layout,
            "train_images": len(self.train),
            "test_good": len(self.test) - n_bad,
            "test_anomalous": n_bad,
        }


def _images_in(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and is_image_file(p))


def read_folder(root: str | Path) -> Dataset:
    """A folder of good images (searched recursively, skipping hidden folders and fre-edge outputs); nothing
    to test on."""
    root = Path(root)
    _check_dir(root)
    paths = find_images(root)
    if not paths:
        raise FreEdgeError(
            f"{root}: no images found (looked for {', '.join(IMAGE_SUFFIXES)}); point to a folder of good images"
        )
    return Dataset(root.name, root, "folder", train=[Sample(p) for p in paths])


def mask_of(folder: Path, stem: str) -> Path | None:
    """The mask of picture ``stem`` in ``folder``: ``<stem>_mask.<ext>`` (MVTec AD) or ``<stem>.<ext>`` (sets that
    name a mask as its picture), for any image suffix."""
    for name in (f"{stem}_mask", stem):
        for suffix in IMAGE_SUFFIXES:
            if (folder / f"{name}{suffix}").is_file():
                return folder / f"{name}{suffix}"
    return None


def read_mvtec(root: str | Path) -> Dataset:
    """MVTec AD category: train/good, test/<defect>, ground_truth/<defect>/<name>_mask.png (or <name>.png, any
    image suffix). A defect with no ground_truth folder at all is labelled by its folder only: its pictures
    count for image AUROC and the operating points, not for the pixel metrics (a warning says so)."""
    root = Path(root)
    _check_dir(root)
    good = root / "train" / "good"
    if not good.is_dir():
        raise FreEdgeError(f"{root}: no train/good folder; this is not an MVTec AD category folder")
    ds = Dataset(root.name, root, "mvtec", train=[Sample(p) for p in _images_in(good)])
    test_root = root / "test"
    if test_root.is_dir():
        for defect_dir in sorted(d for d in test_root.iterdir() if d.is_dir()):
            defect = defect_dir.name
            pictures = _images_in(defect_dir)
            if defect == "good":
                ds.test.extend(Sample(p) for p in pictures)
                continue
            truth = root / "ground_truth" / defect
            if pictures and not truth.is_dir():
                warnings.warn(f"{truth}: no such folder; the {len(pictures)} pictures of test/{defect} count for "
                              f"image AUROC only (add their masks there for the pixel metrics)",
                              FreEdgeWarning, stacklevel=2)
                ds.test.extend(Sample(p, 1, None, defect) for p in pictures)
                continue
            for p in pictures:
                mask = mask_of(truth, p.stem)
                if mask is None:
                    raise FreEdgeError(f"{p}: its mask {truth / (p.stem + '_mask.png')} is missing; "
                                       f"add it or remove the image")
                ds.test.append(Sample(p, 1, mask, defect))
    if not ds.train:
        raise FreEdgeError(f"{good}: no images found; put the good training images there")
    return ds


def read_magnetic_tile(root: str | Path, split: str | Path | None = None) -> Dataset:
    """Magnetic Tile Defects: MT_<Class>/Imgs/<name>.jpg with <name>.png masks, and split.json."""
    root = Path(root)
    _check_dir(root)
    split = Path(split) if split else root / "split.json"
    if not split.is_file():
        raise FreEdgeError(f"{split}: split file not found; pass --split FILE (see split.json format in README)")
    try:
        spec = json.loads(split.read_text())
        train, test = spec["train"], spec["test"]
    except (ValueError, KeyError, TypeError) as exc:
        raise FreEdgeError(f"{split}: not a valid split file ({exc}); it needs 'train' and 'test' keys") from None

    def sample(rel: str, defect: str) -> Sample:
        p = root / rel
        if not p.is_file():
            raise FreEdgeError(f"{p}: listed in {split.name} but missing; restore it or fix the split file")
        if defect == "good":
            return Sample(p)
        mask = p.with_suffix(".png")
        if not mask.is_file():
            raise FreEdgeError(f"{p}: its mask {mask} is missing; add it or remove the image")
        return Sample(p, 1, mask, defect)

    ds = Dataset("magnetic_tile", root, "magnetic_tile", train=[sample(r, "good") for r in train])
    for defect, rels in test.items():
        ds.test.extend(sample(r, defect) for r in rels)
    return ds


def read_dataset(path: str | Path, layout: str = "auto", split: str | Path | None = None) -> Dataset:
    """Read a dataset, detecting the layout when ``layout='auto'``."""
    path = Path(path)
    _check_dir(path)
    if layout == "auto":
        if (path / "train" / "good").is_dir():
            layout = "mvtec"
        elif split is not None or ((path / "split.json").is_file() and (path / "MT_Free").is_dir()):
            layout = "magnetic_tile"
        else:
            layout = "folder"
    readers = {"mvtec": read_mvtec, "folder": read_folder}
    if layout == "magnetic_tile":
        return read_magnetic_tile(path, split)
    if layout not in readers:
        raise FreEdgeError(f"unknown layout {layout!r}; use one of {', '.join(LAYOUTS)}")
    return readers[layout](path)


def _check_dir(path: Path) -> None:
    if not path.exists():
        raise FreEdgeError(f"{path}: no such folder; check the path")
    if not path.is_dir():
        raise FreEdgeError(f"{path}: not a folder; pass the folder that holds the images")
