"""One vocabulary across the commands, and help for every option: walked over every command, so it cannot
drift."""

from __future__ import annotations

import re

import click
import pytest

from cli_helpers import run
from fre_edge.cli import COMMANDS, cli

# one name per concept: where a command has the concept, it spells it so
VOCABULARY = {"output": "--output", "out_dir": "--output", "batch_size": "--batch-size", "quiet": "--quiet",
              "force": "--force", "json_path": "--json"}


def commands():
    ctx = click.Context(cli)
    return [(name, cli.get_command(ctx, name)) for name in COMMANDS]


@pytest.mark.parametrize("name, command", commands(), ids=list(COMMANDS))
def test_every_option_has_help_and_the_shared_names(name, command):
    for param in command.params:
        if not isinstance(param, click.Option) or param.hidden:
            continue
        assert param.help and len(param.help) > 10, f"fre-edge {name} {param.opts[-1]} has no help"
        if param.name in VOCABULARY:
            assert VOCABULARY[param.name] in param.opts, f"fre-edge {name} {param.opts}: use {VOCABULARY[param.name]}"
        if param.name in ("output", "out_dir"):
            assert "-o" in param.opts, f"fre-edge {name}: -o for {VOCABULARY[param.name]}"


@pytest.mark.parametrize("name", list(COMMANDS))
def test_help_speaks_to_users(name):
    r = run(name, "--help")
    assert r.exit_code == 0, r.output
    text = r.output
    assert not re.search(r"#\d|\bissue\b|benchmarks/|this session|in scratch", text), text
    if name == "predict":
        assert "PNG" not in text  # overlays are JPEG


def test_old_spellings_still_work_but_are_not_shown(sample_bundle, sample_root, tmp_path):
    r = run("predict", sample_bundle, sample_root / "test" / "good", "--out", tmp_path / "a", "--quiet")
    assert r.exit_code == 0, r.output
    r = run("predict", sample_bundle, sample_root / "test" / "good", "-o", tmp_path / "b", "--quiet")
    assert r.exit_code == 0, r.output
    assert "--out " not in run("predict", "--help").output
    r = run("bench", sample_bundle, "--batch", "2", "--duration", "0.2")
    assert r.exit_code == 0 and "--batch " not in run("bench", "--help").output


def test_backbone_names_match_the_registry():
    from fre_edge.choices import BACKBONES, DEFAULT_BACKBONE
    from fre_edge.fit.backbones import REGISTRY

    assert BACKBONES == tuple(sorted(REGISTRY)) and DEFAULT_BACKBONE in REGISTRY


def test_an_existing_output_is_refused_before_torch_is_imported(sample_model, sample_bundle, tmp_path):
    """Refusing takes a fraction of a second: torch is never imported for it."""
    import subprocess
    import sys

    model, data = sample_model[0], tmp_path
    for args in (["fit", str(data), "-o", str(model)], ["export", str(model), "-o", str(sample_bundle)],
                 ["quantize", str(sample_bundle), "-o", str(sample_bundle), "--calib", str(data)],
                 ["eval", str(model), str(tmp_path / "nope")],
                 ["fit", str(tmp_path / "nope"), "-o", str(tmp_path / "m")]):
        code = ("import sys\nfrom fre_edge.cli import main\ntry:\n    main(sys.argv[1:])\nexcept SystemExit as e:\n"
                "    print(e.code, 'torch' in sys.modules)")
        r = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=120)
        assert r.stdout.split() == ["2", "False"], (args, r.stdout, r.stderr)
        assert r.stderr.startswith("Error:") and len(r.stderr.strip().splitlines()) == 1, r.stderr
