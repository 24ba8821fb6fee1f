"""``fre-edge info`` (torch-free): what a bundle is, whether it is intact, and what this machine can run."""

from __future__ import annotations

import importlib.metadata as md
import json
from pathlib import Path

import click


def _installed(dist: str) -> str | None:
    try:
        return md.version(dist)
    except md.PackageNotFoundError:
        return None


@click.command("info")
@click.argument("bundle", type=click.Path(path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print the full report as JSON.")
def command(bundle, as_json):
    """Check BUNDLE's checksums and schema, and show what it holds (backbone, input, thresholds, the data it
    was fitted on, precision, head form) next to this machine's CPU and installed runtimes.

    Exit status 0 when the bundle is intact, 2 (with one line saying what is wrong) when it is not.
    """
    from ..bench import cpu_info
    from ..runtime.bundle import read_manifest
    from ..images import size_text

    manifest = read_manifest(bundle, verify=True)  # FreEdgeError -> one line, exit 2
    report = {
        "bundle": str(bundle),
        "checksums": "ok",
        "manifest": manifest,
        "machine": cpu_info(),
        "runtimes": {"openvino": _installed("openvino"), "onnxruntime": _installed("onnxruntime")},
    }
    if as_json:
        click.echo(json.dumps(report, indent=2))
        return
    m, th, cpu = manifest, manifest["thresholds"], report["machine"]
    data = m.get("data", {})
    lines = [
        f"bundle       {bundle} (schema {m['schema_version']}, fre-edge {m['fre_edge_version']}; checksums ok: "
        f"{', '.join(sorted(m['files']))})",
        f"model        FRE on {m['backbone']} {','.join(m['layers'])} ({m.get('backbone_weights', '?')} weights"
        + (f", sha256 {m['backbone_weights_sha256'][:12]}" if m.get("backbone_weights_sha256") else "") + "), "
        f"{size_text(m['input_size'])} px"
        + (f" tiles, {m['tiling']['grid'][0]}x{m['tiling']['grid'][1]} a picture (canvas "
           f"{size_text(m['tiling']['canvas'])})" if m.get("tiling") else "")
        + f", pool {m['pool']}, k = {','.join(map(str, m['n_components']))}, "
        f"head {','.join(m.get('head_forms') or ['?'])}",
        *([map_text(m)] if m.get("map_layers") else []),
        *([score_rule_text(m["image_score"])] if m.get("image_score") else []),
        f"weights      {m['precision']}" + head_weights_text(m.get("head_weights")),
        f"thresholds   image {th['image']:.6g}, pixel {th['pixel']:.6g} ({th.get('n_images', '?')} images; "
        f"source: {th.get('source', '?')})",
        f"fitted on    {data.get('name', '?')}: {data.get('fit_images', '?')} good images"
        + (f" (+ {data['holdout_images']} held out)" if data.get("holdout_images") else ""),
        f"this machine {cpu['cpu']}, {cpu['logical_cores']} logical cores, ISA {' '.join(cpu['isa']) or '-'}",
        "runtimes     " + ", ".join(f"{k} {v or 'not installed'}" for k, v in report["runtimes"].items()),
    ]
    if "model.xml" in m["files"] and not report["runtimes"]["openvino"]:
        lines.append("note         pip install openvino to run the IR (or onnxruntime for model.onnx)")
    click.echo("\n".join(lines))


def score_rule_text(rule: dict) -> str:
    """The image score's rule, and the fit's evidence where it chose it."""
    text = f"score        {rule.get('rule', '?')}"
    if "auroc_max" in rule:
        text += (f" (chosen at fit: good vs pasted patches, AUROC global {rule['auroc_global']:.4f}, with "
                 f"position-free {rule['auroc_max']:.4f}")
        if "gain_lower_bound" in rule:
            text += f", gain at least {rule['gain_lower_bound']:+.4f} at 95%"
        text += ")"
    elif rule.get("chosen_by"):
        text += f" ({rule['chosen_by']})"
    return text


def head_weights_text(hw: dict | None) -> str:
    """What the weights line adds for a bundle exported with --head-weights int8 (its export check), else ""."""
    if not hw:
        return ""
    return (f" (head components {hw['dtype']}: scores within {hw['max_rel_score_difference']:.1e} of f32 on "
            f"{hw['check_inputs']} check inputs, bound {hw['bound']:g})")


def map_text(m: dict) -> str:
    """The map's own heads, each map layer with its pooling kernel (the score's coarse map is added to them)."""
    from ..runtime.bundle import map_pools

    heads = ", ".join(f"{layer} pool {p}" for layer, p in zip(m["map_layers"], map_pools(m)))
    return f"map          its own heads: {heads} (the score from {','.join(m['layers'])}, its coarse map added)"
