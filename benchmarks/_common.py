"""Shared helpers for the benchmark scripts: where the data is, machine facts, writing results."""

from __future__ import annotations

import importlib.metadata as md
import json
import os
import shlex
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# FRE_EDGE_BENCH_RESULTS: somewhere else to write, for a trial run that must not replace the committed results
RESULTS = Path(os.environ.get("FRE_EDGE_BENCH_RESULTS", REPO / "benchmarks" / "results"))
DATASETS = Path(os.environ.get("FRE_EDGE_DATASETS", REPO.parent / "shared" / "datasets"))
WORK = REPO / "models" / "bench"


def versions() -> dict:
    out = {"python": sys.version.split()[0]}
    for pkg in ("fre-edge", "torch", "torchvision", "openvino", "onnxruntime", "onnx", "numpy", "nncf",
                "scikit-learn", "kserve", "tritonclient", "distributed", "pyarrow"):
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            pass
    return out


def environment() -> dict:
    from fre_edge.bench import cpu_info

    module = "benchmarks." + Path(sys.argv[0]).stem  # scripts run as python -m benchmarks.NAME
    return {"command": "python -m " + " ".join(shlex.quote(a) for a in [module, *sys.argv[1:]]),
            "date_utc": time.strftime("%Y-%m-%d %H:%M", time.gmtime()), "machine": cpu_info(),
            "versions": versions()}


# the head's cost goal per ISA class: full graph / backbone alone at k = 438, batch 1 (avx2_capped: AVX2 kernels on a
# wider CPU, ONEDNN_MAX_CPU_ISA=AVX2)
HEAD_GOAL = {"avx2": 1.10, "avx512": 1.05, "avx2_capped": 1.10}


def isa_class(isa: list[str]) -> str:
    """The class of kernels a run measured, for results kept per class: ``avx512`` where the CPU has AVX-512F,
    else ``avx2`` (the head's cost goals differ between the two)."""
    return "avx512" if "avx512f" in isa else "avx2"


def header_md(env: dict) -> str:
    m, v = env["machine"], env["versions"]
    return (f"Command: `{env['command']}`  \n"
            f"Date (UTC): {env['date_utc']}  \n"
            f"Machine: {m['cpu']}, {m['logical_cores']} logical cores, ISA {' '.join(m['isa'])}"
            + (f", caches {' '.join(f'{k} {v}' for k, v in m['caches'].items())}" if m.get("caches") else "") + "  \n"
            "Versions: " + ", ".join(f"{k} {val}" for k, val in v.items()) + "\n")


def write(name: str, data: dict, markdown: str) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{name}.json").write_text(json.dumps(data, indent=2))
    (RESULTS / f"{name}.md").write_text(markdown)
    print(markdown)
