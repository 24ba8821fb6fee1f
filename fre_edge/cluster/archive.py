"""Score an archive of images with a bundle, partition by partition, resumably (``fre-edge archive``).

The output folder::

    archive.json                  what is being scored: bundle digest, the image list's hash, partition size
    scores/part-00000.parquet     one file per partition: path, score, label, anomalous_pixels, peak, bbox, error
    summary.json                  counts, thresholds, runtime; written when every partition is done

A partition file is written to a temporary name and renamed into place, so a file that exists is complete;
a run started again over the same folder skips those partitions, and a partition re-run after a worker
died replaces its own file: no row is lost or written twice.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
from pathlib import Path

from ..errors import FreEdgeError

MARKER = "archive.json"
KIND = "fre-edge archive scores"
COLUMNS = ("path", "score", "label", "anomalous_pixels", "peak", "bbox", "error")


def image_list_hash(paths: list[str]) -> str:
    return hashlib.sha256("\n".join(paths).encode()).hexdigest()


def partition_file(out: Path, index: int) -> Path:
    return out / "scores" / f"part-{index:05d}.parquet"


@functools.lru_cache(maxsize=2)
def _detector(bundle: str, digest: str):
    """One detector per worker process and bundle (the digest in the key: a changed bundle is reloaded)."""
    from ..runtime import load_detector

    return load_detector(bundle, hint="throughput")


def score_partition(bundle: str, digest: str, paths: list[str], out_file: str, batch_size: int = 8) -> dict:
    """Score ``paths`` with the bundle and write their rows to ``out_file`` (Parquet, written whole).

    Engine-neutral: runs wherever the bundle and the images can be read (a Dask worker, a process pool,
    this process). Returns {"rows", "anomalous", "errors"} for the driver's summary.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    from ..runtime.bundle import bundle_digest, read_manifest

    det = _detector(bundle, digest)
    if bundle_digest(read_manifest(bundle, verify=False)) != digest:
        raise FreEdgeError(f"{bundle}: changed since the run started (another digest); start the run again")
    rows, errors = {}, {}
    index = {p: i for i, p in enumerate(paths)}

    def unreadable(path, exc):
        errors[index[path]] = str(exc)

    for path, pred in det.iter_predict(paths, batch_size=batch_size, on_error=unreadable):
        d = pred.to_dict()
        rows[index[path]] = {**{k: d[k] for k in COLUMNS[1:-1]}, "path": path, "error": None}
    for i, message in errors.items():
        rows[i] = {**dict.fromkeys(COLUMNS), "path": paths[i], "error": message}
    ordered = [rows[i] for i in range(len(paths))]
    schema = pa.schema([("path", pa.string()), ("score", pa.float64()), ("label", pa.string()),
                        ("anomalous_pixels", pa.int64()), ("peak", pa.float64()), ("bbox", pa.list_(pa.int64())),
                        ("error", pa.string())])
    table = pa.Table.from_pylist(ordered, schema=schema)
    final = Path(out_file)
    tmp = final.with_name(f".{final.name}.partial-{os.getpid()}")
    try:
        pq.write_table(table, tmp)
        os.replace(tmp, final)  # a partition file that exists is complete
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    remove_dead_partials(final.parent, final.name)
    return {"rows": len(ordered), "anomalous": sum(r["label"] == "anomalous" for r in ordered),
            "errors": len(errors)}


def remove_dead_partials(folder: Path, name: str = "part-") -> None:
    """Remove half-written partition files (``.NAME.partial-PID``) whose writer is gone: a worker killed while
    writing leaves one, and the partition's re-run writes its own."""
    from ..outputs import pid_alive

    for p in folder.glob(f".{name}*.partial-*"):
        pid = p.name.rsplit("-", 1)[-1]
        if pid.isdigit() and not pid_alive(int(pid)):
            p.unlink(missing_ok=True)


def plan(bundle: Path, paths: list[Path], out: Path, partition_size: int) -> tuple[dict, list[tuple[int, list[str]]]]:
    """(the run's description, [(partition index, its paths)] still to score). Creates ``out`` or checks that
    it holds an unfinished or finished run of the same bundle, image list and partition size."""
    from ..runtime.bundle import bundle_digest, read_manifest

    manifest = read_manifest(bundle, verify=True)
    names = [str(p) for p in paths]
    run = {"kind": KIND, "bundle": str(bundle), "digest": bundle_digest(manifest),
           "images": len(names), "images_sha256": image_list_hash(names), "partition_size": partition_size,
           "partitions": (len(names) + partition_size - 1) // partition_size}
    marker = out / MARKER
    if out.exists():
        try:
            old = json.loads(marker.read_text())
        except (OSError, ValueError):
            raise FreEdgeError(f"{out} exists and is not an archive run of fre-edge; choose another --output") from None
        same = {k: old.get(k) for k in ("kind", "digest", "images_sha256", "partition_size")}
        if same != {k: run[k] for k in same}:
            what = ("another bundle" if old.get("digest") != run["digest"] else
                    "another list of images" if old.get("images_sha256") != run["images_sha256"] else
                    "another --partition-size")
            raise FreEdgeError(f"{out} holds a run with {what}; choose another --output to start a new run")
    else:
        from ..outputs import write_text_atomic

        out.mkdir(parents=True)
        write_text_atomic(marker, json.dumps(run, indent=2) + "\n")
    scores = out / "scores"
    if scores.is_symlink() or scores.exists() and not scores.is_dir():
        raise FreEdgeError(f"{scores} is not the folder of partition files fre-edge writes; move it away or "
                           f"choose another --output")
    scores.mkdir(exist_ok=True)
    remove_dead_partials(scores)
    todo = []
    for i in range(run["partitions"]):
        part = partition_file(out, i)
        if part.is_symlink() or part.exists() and not part.is_file():
            raise FreEdgeError(f"{part} is not a partition file fre-edge wrote; remove it and run again")
        if not part.is_file():
            todo.append((i, names[i * partition_size:(i + 1) * partition_size]))
    return run, todo


def read_scores(out: Path):
    """Every row of a run as one pyarrow Table, in image order."""
    import pyarrow.parquet as pq

    files = sorted((out / "scores").glob("part-*.parquet"))
    if not files:
        raise FreEdgeError(f"{out}: no scores yet; run fre-edge archive first")
    import pyarrow as pa

    tables = []
    for f in files:
        try:
            table = pq.read_table(f)
        except (OSError, pa.ArrowException) as exc:
            raise FreEdgeError(f"{f}: not a partition file fre-edge wrote ({' '.join(str(exc).split())[:120]}); "
                               f"remove it and run again to score that partition anew") from None
        if table.column_names != list(COLUMNS):
            raise FreEdgeError(f"{f}: not a partition file fre-edge wrote (its columns are {table.column_names}); "
                               f"remove it and run again to score that partition anew")
        tables.append(table)
    return pa.concat_tables(tables)
