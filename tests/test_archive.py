"""Archive scoring (fre-edge archive): on a 2-worker LocalCluster bound to 127.0.0.1 and in-process, equal to
predict's scores; resuming without re-scoring or duplicating; a worker killed mid-run loses no row."""

from __future__ import annotations

import json
import os
import signal
import subprocess

import pytest

from fre_edge.errors import FreEdgeError
from fre_edge.runtime import load_detector
from fre_edge.serve.process import fre_edge_cmd

try:
    import distributed  # noqa: F401
    import pyarrow  # noqa: F401
except ImportError:
    if os.environ.get("CI"):
        pytest.fail('the dask extra is missing on CI: pip install -e ".[test]"')
    pytest.skip("dask.distributed or pyarrow not installed", allow_module_level=True)

from fre_edge.cluster.archive import plan, read_scores, score_partition  # noqa: E402


def _archive(bundle, images, out, *extra):
    return subprocess.run(fre_edge_cmd("archive", str(bundle), str(images), "--out", str(out), "--quiet", *extra),
                          capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def expected(sample_bundle, sample_root):
    det = load_detector(sample_bundle)
    paths = sorted((sample_root / "test").rglob("*.png"))
    return {str(p.resolve()): det.predict(p).to_dict() for p in paths}


def test_on_a_local_cluster_and_here_scores_equal_predict(sample_bundle, sample_root, expected, tmp_path):
    for name, extra in (("dask", ("--dask", "local:2")), ("here", ())):
        out = tmp_path / name
        run = _archive(sample_bundle, sample_root / "test", out, "--partition-size", "3", *extra)
        assert run.returncode == 1, run.stderr  # the sample's test set holds defects
        rows = read_scores(out).to_pylist()
        assert [r["path"] for r in rows] == sorted(expected)  # every image once, in order
        for r in rows:
            e = expected[r["path"]]
            assert r["score"] == pytest.approx(e["score"], rel=1e-5)
            assert r["label"] == e["label"] and r["error"] is None
            assert r["bbox"] == e["bbox"]
        summary = json.loads((out / "summary.json").read_text())
        assert summary["images"] == len(expected) and summary["partitions"] == 4
        assert summary["anomalous"] == sum(e["label"] == "anomalous" for e in expected.values())


def test_a_second_run_resumes_without_rescoring(sample_bundle, sample_root, expected, tmp_path):
    out = tmp_path / "run"
    assert _archive(sample_bundle, sample_root / "test", out, "--partition-size", "2").returncode == 1
    parts = sorted((out / "scores").glob("part-*.parquet"))
    assert len(parts) == 5
    parts[1].unlink()
    parts[3].unlink()  # as if the run had been killed before these two
    kept = {p: p.stat().st_mtime_ns for p in parts if p.exists()}
    run = _archive(sample_bundle, sample_root / "test", out, "--partition-size", "2")
    assert run.returncode == 1 and "resuming: 3 of 5" in run.stderr
    assert all(p.stat().st_mtime_ns == t for p, t in kept.items())  # finished partitions not re-scored
    assert [r["path"] for r in read_scores(out).to_pylist()] == sorted(expected)
    other = _archive(sample_bundle, sample_root / "test", out, "--partition-size", "3")
    assert other.returncode == 2 and "another --partition-size" in other.stderr
    assert len(other.stderr.strip().splitlines()) == 1


def test_a_worker_killed_mid_run_loses_and_duplicates_nothing(sample_bundle, sample_root, expected, tmp_path):
    import logging

    from distributed import Client, LocalCluster, as_completed

    out = tmp_path / "killed"
    paths = sorted((sample_root / "test").rglob("*.png"))
    run, todo = plan(sample_bundle.resolve(), [p.resolve() for p in paths], out, 1)
    jobs = [(str(sample_bundle.resolve()), run["digest"], names, str(out / "scores" / f"part-{i:05d}.parquet"), 8)
            for i, names in todo]
    with LocalCluster(n_workers=2, threads_per_worker=1, host="127.0.0.1", dashboard_address=None,
                      silence_logs=logging.ERROR) as cluster, Client(cluster) as client:
        pids = client.run(os.getpid)
        futures = [client.submit(score_partition, *job, pure=False) for job in jobs]
        finished = as_completed(futures, with_results=False)
        killed = None
        for count, future in enumerate(finished, 1):
            assert future.result(timeout=300)["rows"] == 1
            if killed is None:  # after the first partition: kill a worker while the rest run
                killed = next(iter(pids.values()))
                os.kill(killed, signal.SIGKILL)
        assert count == len(jobs) and killed is not None
    rows = read_scores(out).to_pylist()
    assert [r["path"] for r in rows] == sorted(expected)  # none lost, none twice
    assert all(r["score"] == pytest.approx(expected[r["path"]]["score"], rel=1e-5) for r in rows)
    assert not list((out / "scores").glob(".*partial*"))  # no half-written file left by the killed worker


def test_bad_arguments_are_one_line(sample_bundle, sample_root, tmp_path):
    cases = [(("--dask", "mars:1"), "use local:N or tcp://"), (("--dask", "local:x"), "write local:N"),
             (("--dask", "tcp://127.0.0.1:9"), "cannot reach the scheduler")]
    for extra, expect in cases:
        run = _archive(sample_bundle, sample_root / "test", tmp_path / "x", *extra)
        assert run.returncode == 2 and expect in run.stderr, run.stderr
        assert len(run.stderr.strip().splitlines()) == 1
        assert not (tmp_path / "x").exists()  # refused before the run folder was made
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("mine")
    run = _archive(sample_bundle, sample_root / "test", tmp_path / "mine")
    assert run.returncode == 2 and "not an archive run" in run.stderr
    assert (tmp_path / "mine" / "notes.txt").read_text() == "mine"
    with pytest.raises(FreEdgeError, match="no scores yet"):
        read_scores(tmp_path / "mine")
