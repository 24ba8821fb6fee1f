"""Archive scoring: `fre-edge archive` in one process against a 2-worker local
Dask cluster, end to end from image files, with the largest process's peak memory.

Each configuration runs the whole command in a fresh subprocess (as a user runs it) on the same images, the
configurations alternating round after round (order flipped). Reported per configuration: wall seconds
(median over rounds), images/s, and the peak resident memory of the largest process of that run (the
command and, for Dask, its worker processes: ``RUSAGE_CHILDREN``, measured in a fresh helper per run).

    python -m benchmarks.archive_scale [--rounds 3] [--dataset mvtec_bottle] [--partition-size 32]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from ._bundles import bundle
from ._common import DATASETS, environment, header_md, write

CONFIGS = {"one process": [], "local Dask, 2 workers": ["--dask", "local:2"]}
# runs the command as a child and prints (wall s, max RSS of any waited-for descendant in KiB)
HELPER = """
import resource, subprocess, sys, time
t0 = time.perf_counter()
code = subprocess.run(sys.argv[1:], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
wall = time.perf_counter() - t0
if code.returncode not in (0, 1):
    sys.exit(code.stderr[-2000:])
print(wall, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)
"""


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--dataset", default="mvtec_bottle")
    ap.add_argument("--partition-size", type=int, default=32)
    args = ap.parse_args()
    from fre_edge.images import find_images
    from fre_edge.timing import markdown_table

    env = environment()
    path = bundle("efficientnet_lite0", dataset=args.dataset)
    images = DATASETS / args.dataset / "train"  # the good pictures: an archive of a line's parts
    n = len(find_images(images))
    walls = {c: [] for c in CONFIGS}
    rss = {c: [] for c in CONFIGS}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.rounds):
            for c in (list(CONFIGS) if r % 2 == 0 else list(CONFIGS)[::-1]):
                out = Path(tmp) / f"run{r}_{len(walls[c])}_{c.split()[0]}"
                cmd = [sys.executable, "-c", "from fre_edge.cli import main; main()", "archive", str(path),
                       str(images), "--out", str(out), "--partition-size", str(args.partition_size), "--quiet",
                       *CONFIGS[c]]
                done = subprocess.run([sys.executable, "-c", HELPER, *cmd], capture_output=True, text=True)
                if done.returncode != 0:
                    raise SystemExit(f"{c}: {done.stderr[-2000:]}")
                wall, kib = done.stdout.split()
                walls[c].append(float(wall))
                rss[c].append(int(kib) / 1024)
                summary = json.loads((out / "summary.json").read_text())
                assert summary["images"] == n
            print(f"round {r + 1}/{args.rounds} done", flush=True)
    rows = [{"config": c, "images": n, "wall_s_median": statistics.median(walls[c]), "wall_s_rounds": walls[c],
             "images_per_s": n / statistics.median(walls[c]), "peak_rss_mb_largest_process": max(rss[c])}
            for c in CONFIGS]
    base = rows[0]["wall_s_median"]
    data = {"environment": env, "settings": {"rounds": args.rounds, "dataset": args.dataset, "images": n,
                                             "partition_size": args.partition_size, "bundle": path.name},
            "rows": rows}
    md = ["# Archive scoring: one process vs a 2-worker local Dask cluster", "", header_md(env),
          f"`fre-edge archive` on {args.dataset}/train ({n} files), Lite0 bundle ({path.name}), "
          f"--partition-size {args.partition_size}, whole command per run (start-up included: the cluster's "
          f"workers each load the bundle), {args.rounds} alternating rounds; medians.", "",
          markdown_table(["configuration", "wall s", "images/s", "speed vs one process",
                          "peak RSS, largest process MB"],
                         [[r["config"], f"{r['wall_s_median']:.1f}", f"{r['images_per_s']:.1f}",
                           f"{base / r['wall_s_median']:.2f}x", f"{r['peak_rss_mb_largest_process']:.0f}"]
                          for r in rows]),
          "", "Both configurations run on the same 2 cores: here the cluster's two workers share them (each worker's "
          "OpenVINO uses its own threads).", ""]
    write("archive_scale", data, "\n".join(md))


if __name__ == "__main__":
    main()
