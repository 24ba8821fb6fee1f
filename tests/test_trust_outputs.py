"""No input overwritten, exit 2 for every failure that is the user's or the machine's, a manifest that says
what was used, and no library noise: each case run through the CLI as a user meets it."""

from __future__ import annotations

import contextlib
import hashlib
import json
import shutil
import subprocess
import uuid
from pathlib import Path

import pytest

from cli_helpers import one_error_line, run
from fre_edge.serve.process import fre_edge_cmd


def digest_tree(root: Path) -> dict:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture
def data(sample_root, tmp_path):
    return shutil.copytree(sample_root, tmp_path / "data")


# ----------------------------------------------------------------------- 1. an output never overwrites an input

def cases(bundle, model, data):
    """(command args, the input folders it must leave untouched): every writing option aimed into an input."""
    good = data / "test" / "good"
    return [
        (["bench", bundle, "--duration", "0.1", "--json", bundle / "manifest.json"], [bundle]),
        (["bench", bundle, "--duration", "0.1", "--json", bundle / "new.json"], [bundle]),
        (["bench", bundle, "--duration", "0.1", "--images", good, "--json", good / "bench.json"], [data, bundle]),
        (["eval", model, data, "--json", model / "model.json"], [model, data]),
        (["eval", model, data, "--json", data / "train" / "good" / "000.png"], [model, data]),
        (["eval", model, data, "--pictures", good], [model, data]),
        (["eval", model, data, "--pictures", data / "heatmaps"], [model, data]),
        (["predict", bundle, good, "--out", good / "scores"], [bundle, data]),
        (["predict", bundle, good, "--out", bundle / "scores"], [bundle, data]),
        (["export", model, "-o", model / "bundle"], [model]),
        (["archive", bundle, good, "--out", good / "archive"], [bundle, data]),
        (["repository", f"m={bundle}", "-o", bundle / "repo"], [bundle]),
        (["model-api", bundle, "-o", bundle / "model_api"], [bundle]),
    ]


def test_no_output_lands_in_or_over_an_input(bundle, model, data):
    for args, untouched in cases(bundle, model, data):
        before = [digest_tree(d) for d in untouched]
        line = one_error_line(run(*args))
        assert "input" in line or "exists" in line, (args, line)
        assert [digest_tree(d) for d in untouched] == before, args


def test_an_existing_file_is_replaced_only_with_force_and_only_if_fre_edge_wrote_it(bundle, tmp_path):
    mine = tmp_path / "existing.txt"
    mine.write_text("my notes")
    assert "already exists" in one_error_line(run("bench", bundle, "--duration", "0.1", "--json", mine))
    assert "not written by fre-edge" in one_error_line(run("bench", bundle, "--duration", "0.1", "--json", mine,
                                                           "--force"))
    assert mine.read_text() == "my notes"
    ours = tmp_path / "bench.json"
    assert run("bench", bundle, "--duration", "0.1", "--json", ours).exit_code == 0
    assert json.loads(ours.read_text())["kind"] == "fre-edge bench"
    assert "already exists" in one_error_line(run("bench", bundle, "--duration", "0.1", "--json", ours))
    assert run("bench", bundle, "--duration", "0.1", "--json", ours, "--force").exit_code == 0


def test_eval_rewrites_its_own_outputs_and_keeps_users_files(model, data, tmp_path):
    for _ in range(2):  # the model folder's own eval.json and eval_pictures are rewritten on each run
        r = run("eval", model, data, "-n", "2", "--quiet")
        assert r.exit_code == 0, r.output
    assert json.loads((model / "eval.json").read_text())["kind"] == "fre-edge eval"
    assert sorted(p.name for p in (model / "eval_pictures").iterdir())[-1] == "scores.png"
    pictures = tmp_path / "pictures"
    assert run("eval", model, data, "-n", "2", "--pictures", pictures, "--json", tmp_path / "e.json").exit_code == 0
    (pictures / "mine.txt").write_text("keep")
    line = one_error_line(run("eval", model, data, "-n", "2", "--pictures", pictures, "--force"))
    assert "did not write" in line and (pictures / "mine.txt").read_text() == "keep"


def test_the_current_folder_is_never_the_folder_replaced(model, tmp_path, monkeypatch):
    out = tmp_path / "bundle"
    assert run("export", model, "-o", out).exit_code == 0
    monkeypatch.chdir(out)
    line = one_error_line(run("export", model, "-o", ".", "--force"))
    assert "current folder" in line
    monkeypatch.chdir(tmp_path)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")], list(tmp_path.iterdir())
    assert run("export", model, "-o", out, "--force").exit_code == 0  # and later runs are not blocked


# ----------------------------------------------------------------------- 5. the machine's refusals are exit 2

@contextlib.contextmanager
def tmpfs(path: Path, options: str):
    path.mkdir(parents=True, exist_ok=True)
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)], capture_output=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({r.stderr.decode().strip()})")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def test_a_read_only_disk_is_refused_before_the_work(model, bundle, data, tmp_path):
    with tmpfs(tmp_path / "ro", "ro,size=1m") as ro:
        good = data / "test" / "good"
        for args in (["fit", data, "-o", ro / "m", "--quiet"], ["export", model, "-o", ro / "b"],
                     ["predict", bundle, good, "--out", ro / "p"], ["archive", bundle, good, "--out", ro / "a"],
                     ["repository", f"m={bundle}", "-o", ro / "r"], ["model-api", bundle, "-o", ro / "x"],
                     ["bench", bundle, "--duration", "0.1", "--json", ro / "b.json"],
                     ["eval", model, data, "--json", ro / "e.json"]):
            line = one_error_line(run(*args))
            assert "writable" in line or "Read-only" in line, (args, line)


def test_a_full_disk_is_exit_2_and_leaves_nothing(model, bundle, data, tmp_path):
    with tmpfs(tmp_path / "full", "size=2m") as full:  # room for the checks, not for the bundle's 20 MB
        line = one_error_line(run("export", model, "-o", full / "b"))
        assert "No space left" in line
        assert list(full.iterdir()) == []
        filler = full / "filler"  # leave 32 kB: less than the predictions' overlays
        filler.write_bytes(bytes(shutil.disk_usage(full).free - (32 << 10)))
        line = one_error_line(run("predict", bundle, data / "test", "--out", full / "p", "--quiet"))
        assert "No space left" in line
        line = one_error_line(run("archive", bundle, data / "test", "--out", full / "a", "--partition-size", "1",
                                  "--quiet"))
        assert "No space left" in line
        assert sorted(p.name for p in full.iterdir()) == ["a", "filler"]  # a run folder, resumable; no temporaries
        assert not [p for p in (full / "a").rglob("*") if ".partial" in p.name]


def test_user_side_failures_are_one_line_exit_2(model, bundle, data, tmp_path):
    good = data / "test" / "good"
    assert "port" in one_error_line(run("archive", bundle, good, "--out", tmp_path / "a", "--dask", "tcp://host"))
    assert "--pool" in one_error_line(run("fit", data, "-o", tmp_path / "m", "--pool", "64", "--input-size", "64"))
    # weights of another network
    import torch

    torch.save(torch.nn.Linear(3, 3).state_dict(), tmp_path / "linear.pth")
    assert "not efficientnet-lite0 weights" in one_error_line(
        run("fit", data, "-o", tmp_path / "m", "--weights", tmp_path / "linear.pth"))
    assert "not resnet18 weights" in one_error_line(
        run("fit", data, "-o", tmp_path / "m", "--backbone", "resnet18", "--weights", tmp_path / "linear.pth"))
    # a folder that is not a bundle: said once, not "use the other backend"
    for backend in ("openvino", "onnxruntime"):
        line = one_error_line(run("predict", model, good, "--backend", backend))
        assert "not a bundle" in line and "--backend" not in line


def test_a_damaged_archive_run_folder_is_exit_2(bundle, data, tmp_path):
    good, out = data / "test" / "good", tmp_path / "run"
    assert run("archive", bundle, good, "--out", out, "--partition-size", "2", "--quiet").exit_code == 0
    part = sorted((out / "scores").glob("part-*.parquet"))[0]
    part.write_bytes(b"not parquet")
    line = one_error_line(run("archive", bundle, good, "--out", out, "--partition-size", "2", "--quiet"))
    assert part.name in line and "remove it" in line
    part.unlink()
    part.mkdir()
    assert "not a partition file" in one_error_line(
        run("archive", bundle, good, "--out", out, "--partition-size", "2", "--quiet"))


# ----------------------------------------------------------------------- 6. the manifest says what was used

def test_a_weights_file_is_recorded_with_its_digest(data, tmp_path):
    from efficientnet_lite_pytorch import EfficientNet
    from safetensors.torch import save_file

    import torch

    torch.manual_seed(0)
    random_lite0 = EfficientNet.from_name("efficientnet-lite0", image_size=224)
    weights = tmp_path / "random_lite0.safetensors"
    save_file({k: v.contiguous() for k, v in random_lite0.state_dict().items()}, str(weights))
    r = run("export", data / "train" / "good", "-o", tmp_path / "b", "--quiet", "--input-size", "224")
    assert r.exit_code == 0, r.output
    assert json.loads((tmp_path / "b" / "manifest.json").read_text())["backbone_weights"] == "imagenet"
    assert run("fit", data, "-o", tmp_path / "m", "--weights", weights, "--quiet", "--input-size", "224").exit_code == 0
    assert run("export", tmp_path / "m", "-o", tmp_path / "bw").exit_code == 0
    manifest = json.loads((tmp_path / "bw" / "manifest.json").read_text())
    assert manifest["backbone_weights"] == "file random_lite0.safetensors"
    assert manifest["backbone_weights_sha256"] == hashlib.sha256(weights.read_bytes()).hexdigest()
    info = run("info", tmp_path / "bw")
    assert "file random_lite0.safetensors weights, sha256 " + manifest["backbone_weights_sha256"][:12] in info.stdout


# ----------------------------------------------------------------------- 7. our lines, not the libraries' noise

def test_no_library_noise_on_the_terminal(bundle, data, tmp_path):
    from PIL import Image

    big = tmp_path / "big" / f"{uuid.uuid4().hex}.png"
    big.parent.mkdir()
    Image.new("RGB", (10000, 9000), (90, 90, 90)).save(big)  # past Pillow's warning limit, under its error limit
    r = subprocess.run(fre_edge_cmd("predict", str(bundle), str(big), str(data / "test" / "good"), "--backend",
                                    "onnxruntime", "--quiet"), capture_output=True, text=True, timeout=300)
    assert r.returncode in (0, 1), r.stderr
    err = [line for line in r.stderr.splitlines() if line.strip()]
    assert len([line for line in err if line.startswith("warning:") and big.name in line]) == 1, err
    assert not [line for line in err if "Warning" in line or "\x1b[" in line or "onnxruntime" in line.lower()], err
