import json

import numpy as np
import pytest
from PIL import Image

from fre_edge.fit.data import read_dataset, read_folder, read_magnetic_tile, read_mvtec
from fre_edge.errors import FreEdgeError
from fre_edge.images import load_image, load_mask, prepare, resize_map, to_rgb_uint8


def test_conversions_grey_rgba_16bit(tmp_path):
    grey = np.arange(64, dtype=np.uint8).reshape(8, 8)
    Image.fromarray(grey, "L").save(tmp_path / "g.png")
    rgba = np.dstack([grey, grey, grey, np.full_like(grey, 7)])
    Image.fromarray(rgba, "RGBA").save(tmp_path / "a.png")
    g16 = (grey.astype(np.uint16) * 257)
    Image.fromarray(g16).save(tmp_path / "w.png")
    for name in ("g.png", "a.png", "w.png"):
        img = load_image(tmp_path / name)
        assert img.shape == (8, 8, 3) and img.dtype == np.uint8, name
        np.testing.assert_array_equal(img[..., 0], grey)
        np.testing.assert_array_equal(img[..., 2], grey)
    np.testing.assert_array_equal(to_rgb_uint8(np.full((2, 2), 0.5))[..., 1], 128)


@pytest.mark.parametrize("content", [b"", b"not an image at all", None])
def test_bad_image_files_name_the_file(tmp_path, content):
    p = tmp_path / "broken.png"
    if content is None:  # a real PNG cut in half
        Image.fromarray(np.zeros((64, 64, 3), np.uint8) + 100).save(p)
        p.write_bytes(p.read_bytes()[: len(p.read_bytes()) // 2])
    else:
        p.write_bytes(content)
    with pytest.raises(FreEdgeError, match=r"broken\.png: cannot read image"):
        load_image(p)


def test_bad_arrays():
    with pytest.raises(FreEdgeError, match="shape"):
        to_rgb_uint8(np.zeros((4, 4, 2), np.uint8))
    with pytest.raises(FreEdgeError, match="dtype"):
        to_rgb_uint8(np.zeros((4, 4), complex))


def test_prepare_and_map_resize():
    img = prepare(np.zeros((30, 50), np.uint8), 64)
    assert img.shape == (64, 64, 3)
    m = resize_map(np.ones((16, 16), np.float32), 30, 50)
    assert m.shape == (30, 50) and np.allclose(m, 1.0)


def test_mvtec_reader_on_real_bottle(bottle_root):
    ds = read_mvtec(bottle_root)
    assert len(ds.train) == 209
    assert ds.summary()["test_good"] == 20 and ds.summary()["test_anomalous"] == 63
    bad = [s for s in ds.test if s.label]
    assert {s.defect for s in bad} == {"broken_large", "broken_small", "contamination"}
    m = load_mask(bad[0].mask, 256, 256)
    assert m.dtype == bool and m.any() and m.shape == (256, 256)
    assert read_dataset(bottle_root).layout == "mvtec"


def test_magnetic_tile_reader_on_real_split(mtd_root):
    ds = read_magnetic_tile(mtd_root)
    assert len(ds.train) == 762
    assert ds.summary()["test_good"] == 190 and ds.summary()["test_anomalous"] == 392
    assert all(s.mask is not None and s.mask.suffix == ".png" for s in ds.test if s.label)
    assert read_dataset(mtd_root).layout == "magnetic_tile"
    img = load_image(ds.train[0].path)  # grey jpg -> RGB
    assert img.ndim == 3 and img.shape[2] == 3


def test_folder_reader(tmp_path):
    (tmp_path / "sub").mkdir()
    for i in range(3):
        Image.fromarray(np.zeros((8, 8), np.uint8)).save(tmp_path / "sub" / f"{i}.png")
    (tmp_path / "notes.txt").write_text("x")
    ds = read_folder(tmp_path)
    assert len(ds.train) == 3 and ds.test == []


def test_reader_errors(tmp_path):
    with pytest.raises(FreEdgeError, match="no such folder"):
        read_dataset(tmp_path / "missing")
    with pytest.raises(FreEdgeError, match="no images found"):
        read_dataset(tmp_path)
    (tmp_path / "f.txt").write_text("x")
    with pytest.raises(FreEdgeError, match="not a folder"):
        read_dataset(tmp_path / "f.txt")
    with pytest.raises(FreEdgeError, match="unknown layout"):
        read_dataset(tmp_path, layout="coco")
    (tmp_path / "split.json").write_text(json.dumps({"train": ["nope.jpg"], "test": {}}))
    with pytest.raises(FreEdgeError, match="nope.jpg: listed in split.json but missing"):
        read_magnetic_tile(tmp_path)
    (tmp_path / "split.json").write_text("{broken")
    with pytest.raises(FreEdgeError, match="not a valid split file"):
        read_magnetic_tile(tmp_path)


def test_large_jpegs_decode_at_reduced_scale_within_a_bound(sample_bundle, sample_root, tmp_path):
    """A 5 MP JPEG is decoded by the DCT at 1/2-1/8 scale before the exact resize. Against a full decode, on
    real pictures upscaled to camera size: scores within 2%, maps within 10% of their peak."""
    from fre_edge.images import load_image, read_for_model, resize_rgb
    from fre_edge.runtime import load_detector

    det = load_detector(sample_bundle)
    S = det.input_size
    for i, p in enumerate(sorted((sample_root / "test").rglob("*.png"))[::3]):
        path = tmp_path / f"{i}.jpg"
        Image.open(p).convert("RGB").resize((2592, 1944), Image.Resampling.BICUBIC).save(path, quality=90)
        drafted, hw = read_for_model(path, S)
        assert hw == (1944, 2592)
        full = resize_rgb(load_image(path), S)
        (s_full,), (m_full,) = det.infer_prepared(full[None])
        (s_draft,), (m_draft,) = det.infer_prepared(drafted[None])
        assert abs(s_draft / s_full - 1) < 0.02
        assert np.abs(m_draft - m_full).max() < 0.10 * m_full.max()
        assert det.predict(path).anomaly_map.shape == (1944, 2592)


def test_read_for_model_reports_the_upright_size(tmp_path):
    from fre_edge.images import read_for_model

    exif = Image.Exif()
    exif[0x0112] = 6
    Image.new("RGB", (300, 200), (10, 20, 30)).save(tmp_path / "turned.jpg", exif=exif)
    x, hw = read_for_model(tmp_path / "turned.jpg", 64)
    assert x.shape == (64, 64, 3) and hw == (300, 200)


def test_mvtec_layouts_as_other_sets_name_their_masks(tmp_path):
    """Masks named as their picture (any image suffix) are found; 0 / 1 label masks read as drawn; a defect with
    no ground_truth folder is labelled by its folder and left out of the pixel metrics, with a warning."""
    from fre_edge.fit.evaluate import compute_metrics
    from fre_edge.outputs import FreEdgeWarning

    root = tmp_path / "plates"
    pic = np.full((32, 32), 90, np.uint8)
    for rel in ("train/good/0.png", "test/good/0.png", "test/dent/0.png", "test/dent/1.png", "test/scratch/0.png"):
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(pic).save(root / rel)
    (root / "ground_truth" / "dent").mkdir(parents=True)
    label = np.zeros((32, 32), np.uint8)
    label[4:12, 4:12] = 1  # a label mask: 0 good, 1 defect
    Image.fromarray(label).save(root / "ground_truth" / "dent" / "0.png")
    Image.fromarray(label * 255).save(root / "ground_truth" / "dent" / "1_mask.bmp")
    with pytest.warns(FreEdgeWarning, match=r"ground_truth/scratch: no such folder; the 1 pictures of test/scratch"):
        ds = read_mvtec(root)
    by = {(s.defect, s.path.stem): s for s in ds.test}
    assert by["dent", "0"].mask.name == "0.png" and by["dent", "1"].mask.name == "1_mask.bmp"
    assert by["scratch", "0"].label == 1 and by["scratch", "0"].mask is None
    for s in (by["dent", "0"], by["dent", "1"]):
        m = load_mask(s.mask, 32, 32)
        assert m.sum() == 64 and m[4:12, 4:12].all()
    # maps that find the dents exactly; the scratch's map is all high: were its missing mask taken as all good,
    # its 1024 pixels would count as false positives and pixel AUROC would fall below 1
    samples = ds.test
    maps = np.zeros((len(samples), 32, 32), np.float32)
    for i, s in enumerate(samples):
        if s.defect == "dent":
            maps[i, 4:12, 4:12] = 1.0
        elif s.defect == "scratch":
            maps[i] = 2.0
    scores = maps.reshape(len(samples), -1).max(1)
    out = compute_metrics(samples, scores, maps)
    assert out["n_anomalous"] == 3 and out["image_auroc"] == 1.0
    assert out["pixel_auroc"] == 1.0 and out["aupro"] > 0.99 and out["pixel_metrics_images"] == 3
    # a picture whose mask folder exists but whose mask is missing is still refused in one line
    (root / "ground_truth" / "dent" / "1_mask.bmp").unlink()
    with pytest.raises(FreEdgeError, match=r"1\.png: its mask .*1_mask\.png is missing; add it or remove"):
        read_mvtec(root)
