"""fre-edge export --head-weights int8: the head's components stored once as INT8 in the IR, checked at export
against the float graph on good pictures, recorded in the manifest; bad settings one line each."""

from __future__ import annotations

import json

import numpy as np
import openvino as ov
import pytest

from cli_helpers import one_error_line, run


def _big_constants(xml) -> list[tuple[str, list[int]]]:
    model = ov.Core().read_model(str(xml))
    return [(str(op.get_element_type()), list(op.get_output_shape(0))) for op in model.get_ops()
            if op.get_type_name() == "Constant" and int(np.prod(op.get_output_shape(0))) >= 1 << 16]


@pytest.fixture(scope="module")
def bundles(sample_model, sample_root, tmp_path_factory):
    root = tmp_path_factory.mktemp("head_weights")
    r = run("export", sample_model[0], "-o", root / "int8", "--format", "openvino", "--head-weights", "int8",
            "--check-images", sample_root / "test" / "good", "--quiet")
    assert r.exit_code == 0, r.output
    r = run("export", sample_model[0], "-o", root / "f32", "--format", "openvino", "--head-form", "reconstruct",
            "--quiet")
    assert r.exit_code == 0, r.output
    return root / "int8", root / "f32"


def test_the_components_are_stored_once_as_int8_and_the_check_is_recorded(bundles, sample_model):
    int8, f32 = bundles
    shapes = [tuple(h.components.shape) for h in sample_model[1].detector.heads]  # the score's head, the map's
    k, d = shapes[0]
    big = _big_constants(int8 / "model.xml")
    assert ("<Type: 'uint8_t'>", [k, d]) in big and ("<Type: 'uint8_t'>", [d, k]) in big  # V and V^T
    assert _big_constants(f32 / "model.xml").count(("<Type: 'float32'>", [k, d])) == 1
    assert not any(shape in ([k, d], [d, k]) for t, shape in big if "float" in t)
    saved = (f32 / "model.bin").stat().st_size - (int8 / "model.bin").stat().st_size
    # per head, one f32 V (4 bytes a value) -> two INT8 copies, plus a f32 scale and a u8 zero point per output
    # channel
    assert sum(2 * d * k - 5 * (d + k) - 4096 for k, d in shapes) <= saved <= sum(2 * d * k for k, d in shapes)
    manifest = json.loads((int8 / "manifest.json").read_text())
    hw = manifest["head_weights"]
    assert hw["dtype"] == "int8" and hw["bound"] == 0.01 and hw["check_inputs"] == 4
    assert 0 < hw["max_rel_score_difference"] <= 0.01 and manifest["head_forms"] == ["reconstruct"] * 4
    assert manifest["files"].keys() == {"model.xml", "model.bin"}


def test_both_head_matmuls_read_int8_weights_when_compiled(bundles, sample_model):
    """The CPU plugin keeps a matmul's INT8 weights only when it can fuse their decompression into the kernel;
    otherwise it decompresses them to f32 at load and the head reads f32 again. Both head matmuls must read
    u8 (the compiled graph's own record), the f32 bundle's f32."""
    from fre_edge.export.head_weights import weight_types_at_run

    k, d = sample_model[1].detector.heads[0].components.shape

    def head_weight_types(xml):
        return weight_types_at_run(ov.Core().compile_model(str(xml), "CPU", {"INFERENCE_PRECISION_HINT": "f32"}), k, d)

    int8, f32 = bundles
    assert head_weight_types(int8 / "model.xml") == ["u8", "u8"]
    assert head_weight_types(f32 / "model.xml") == ["f32", "f32"]


def test_the_runtime_and_bench_say_what_the_compiled_head_reads(bundles, tmp_path):
    """On the inspection PC: whether the INT8 head weights are what the compiled graph reads (the plugin may
    decompress them at load, and then they save no time)."""
    from fre_edge.bench import format_table
    from fre_edge.runtime import load_detector

    int8, f32 = bundles
    # two matmuls per head: the score's head and the two unpooled map heads (the grid head's V, 24 x 1960 values
    # here, is below the size of what is stored as INT8)
    assert load_detector(int8).describe()["head_weights"] == {"stored": "int8", "at_run": ["u8"] * 6}
    assert "head_weights" not in load_detector(f32).describe()
    r = run("bench", int8, "--duration", "0.2", "--json", tmp_path / "b.json")
    assert r.exit_code == 0, r.output
    assert "head weights: int8 in the bundle, read as " + ", ".join(["u8"] * 6) + " once compiled\n" in r.output
    result = json.loads((tmp_path / "b.json").read_text())
    assert result["runtime"]["head_weights"]["at_run"] == ["u8"] * 6
    result["runtime"]["head_weights"]["at_run"] = ["u8", "f32"]  # as the earlier export compiled
    assert "read as u8, f32 once compiled (decompressed at load" in format_table(result)


def test_its_scores_stay_within_the_bound_of_the_float_bundle(bundles, sample_root):
    from fre_edge.runtime import load_detector

    paths = sorted((sample_root / "test").rglob("*.png"))
    got = load_detector(bundles[0]).predict_batch(paths)
    ref = load_detector(bundles[1]).predict_batch(paths)
    s, r = np.array([p.score for p in got]), np.array([p.score for p in ref])
    assert not np.array_equal(s, r)  # the weights did change
    np.testing.assert_allclose(s, r, rtol=0.01)
    assert [p.anomalous for p in got] == [p.anomalous for p in ref]
    np.testing.assert_allclose(np.stack([p.model_map for p in got]), np.stack([p.model_map for p in ref]),
                               atol=0.02 * max(float(p.model_map.max()) for p in ref))


@pytest.mark.parametrize("args, message", [
    (("--format", "openvino", "--head-weights", "int8"), "--head-weights int8 needs --check-images DIR"),
    (("--head-weights", "int8", "--check-images", "GOOD"), "for the OpenVINO IR only"),
    (("--format", "openvino", "--head-weights", "int8", "--check-images", "GOOD", "--fp16"), "do not go together"),
    (("--format", "openvino", "--head-weights", "int8", "--check-images", "GOOD", "--head-form", "one_pass"),
     "use --head-form reconstruct or auto"),
    (("--format", "openvino", "--head-weights", "int8", "--check-images", "GOOD", "--score-bound", "1e-9"),
     "over the bound 1e-09"),
    (("--check-images", "GOOD"), "--check-images applies to --head-weights int8 only"),
    (("--format", "openvino", "--head-weights", "int8", "--check-images", "ONE"), "give at least 4 good pictures"),
])
def test_bad_head_weight_settings_are_one_line_and_write_nothing(sample_model, sample_root, tmp_path, args,
                                                                 message):
    one = tmp_path / "one"
    one.mkdir()
    (one / "a.png").write_bytes((sample_root / "test" / "good" / "000.png").read_bytes())
    folders = {"GOOD": sample_root / "test" / "good", "ONE": one}
    r = run("export", sample_model[0], "-o", tmp_path / "b", *(folders.get(a, a) for a in args), "--quiet")
    assert message in one_error_line(r)
    assert not (tmp_path / "b").exists()


def test_info_shows_it_and_quantize_refuses_it(bundles, sample_root, tmp_path):
    r = run("info", bundles[0])
    assert r.exit_code == 0 and "head components int8: scores within" in r.stdout
    r = run("quantize", bundles[0], "-o", tmp_path / "q", "--calib", sample_root / "train" / "good")
    assert "has INT8 head weights; quantize a bundle exported with --head-weights f32" in one_error_line(r)
    assert not (tmp_path / "q").exists()


def test_compress_head_int4_groups_the_shared_components_and_refuses_other_widths():
    """The INT4 form head_levers measures: one u4 constant read by both matmuls, a scale per 128 inputs."""
    import openvino.opset13 as ops

    from fre_edge.export.head_weights import compress_head

    k, d = 24, 4096
    comps = ops.constant(np.random.default_rng(0).standard_normal((k, d)).astype(np.float32))
    x = ops.parameter([1, d], np.float32)
    model = ov.Model([ops.matmul(ops.matmul(x, comps, False, True), comps, False, False)], [x])
    packed = compress_head(model.clone(), bits=4, group_size=128)
    consts = [(op.get_output_element_type(0).get_type_name(), list(op.get_output_shape(0)))
              for op in packed.get_ops() if op.get_type_name() == "Constant"]
    assert sorted(s for t, s in consts if t == "u4") == [[k, d // 128, 1], [k, d // 128, 128]]  # zero points, V
    assert not any(t == "f32" and np.prod(s) >= k * d for t, s in consts)
    with pytest.raises(ValueError, match="bits must be 8 or 4"):
        compress_head(model.clone(), bits=3)
