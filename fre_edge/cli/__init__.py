"""The ``fre-edge`` command line: a click group whose subcommands load lazily.

``fre-edge bench --help`` and ``fre-edge predict`` never import torch: each command lives in its own
module, imported only when that command runs. Any :class:`~fre_edge.errors.FreEdgeError`, and any bad
option or argument of a subcommand, becomes one line on stderr and exit status 2.
"""

from __future__ import annotations

import importlib
import sys

import click

from .. import __version__
from ..errors import FreEdgeError

COMMANDS = {
    "fit": ("fre_edge.cli.fit_cmd", "Fit FRE on a folder of good images (needs the fit extra)."),
    "eval": ("fre_edge.cli.eval_cmd", "Evaluate a fitted model on a labelled test set (needs the fit extra)."),
    "export": ("fre_edge.cli.export_cmd", "Export a fitted model as an OpenVINO IR + ONNX bundle (needs the fit extra)."),
    "quantize": ("fre_edge.cli.quantize_cmd", "Quantize a bundle to INT8 with NNCF on good images (needs the fit extra)."),
    "predict": ("fre_edge.cli.predict_cmd", "Score images with a bundle (torch-free)."),
    "bench": ("fre_edge.cli.bench_cmd", "Measure a bundle's latency and FPS (torch-free)."),
    "info": ("fre_edge.cli.info_cmd", "Check a bundle and show what it holds and what this machine runs (torch-free)."),
}


def echo_warnings(info: dict) -> None:
    """A fitted model's warnings (``info["warnings"]``), one line each on stderr."""
    for w in info.get("warnings", []):
        click.echo(f"warning: {w}", err=True)


class LazyGroup(click.Group):
    def list_commands(self, ctx):
        return list(COMMANDS)

    def get_command(self, ctx, name):
        if name not in COMMANDS:
            return None
        module = importlib.import_module(COMMANDS[name][0])
        return module.command

    def format_commands(self, ctx, formatter):
        rows = [(name, help_) for name, (_, help_) in COMMANDS.items()]
        with formatter.section("Commands"):
            formatter.write_dl(rows)

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except FreEdgeError as exc:
            click.echo(f"Error: {exc}", err=True)
            ctx.exit(2)
        except click.UsageError as exc:  # a bad option or argument of a subcommand: one line, not click's usage block
            where = f"fre-edge {exc.ctx.info_name}" if exc.ctx is not None and exc.ctx is not ctx else "fre-edge"
            click.echo(f"Error: {exc.format_message()} (see: {where} --help)", err=True)
            ctx.exit(2)
        except ImportError as exc:
            if exc.name and exc.name.split(".")[0] in {"torch", "torchvision", "nncf", "onnx", "onnxscript",
                                                        "safetensors", "sklearn", "scipy"}:
                click.echo(f'Error: this command needs {exc.name}; run: pip install "fre-edge[fit]"', err=True)
                ctx.exit(2)
            raise


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="fre-edge")
def cli():
    """fre-edge: fit FRE anomaly detection on good images, export one bundle, run it fast on the CPU."""


def main(argv=None):
    cli.main(args=argv if argv is not None else sys.argv[1:], prog_name="fre-edge")
