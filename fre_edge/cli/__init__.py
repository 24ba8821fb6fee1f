"""The ``fre-edge`` command line: a click group whose subcommands load lazily.

``fre-edge bench --help`` and ``fre-edge predict`` never import torch: each command lives in its own
module, imported only when that command runs. Any :class:`~fre_edge.errors.FreEdgeError`, and any bad
option or argument of a subcommand, becomes one line on stderr and exit status 2.
"""

from __future__ import annotations

import errno
import importlib
import os
import sys
import traceback
import warnings

import click

from .. import __version__
from ..errors import FreEdgeError
from ..outputs import FreEdgeWarning

EXIT_ERROR, EXIT_INTERNAL, EXIT_INTERRUPTED = 2, 3, 130
# what the machine refuses (a disk full or read-only, no permission): the user's to fix, not a bug
MACHINE_ERRNOS = {errno.ENOSPC: "free some space or choose an output on another disk",
                  errno.EDQUOT: "free some space or choose an output on another disk",
                  errno.EROFS: "choose an output on a writable disk",
                  errno.EACCES: "check its permissions or choose another path",
                  errno.EPERM: "check its permissions or choose another path"}
FIT_MODULES = {"torch", "torchvision", "nncf", "onnx", "onnxscript", "safetensors", "sklearn", "scipy"}

COMMANDS = {
    "fit": ("fre_edge.cli.fit_cmd", "Fit FRE on a folder of good images (needs the fit extra)."),
    "eval": ("fre_edge.cli.eval_cmd", "Evaluate a fitted model on a labelled test set (needs the fit extra)."),
    "export": ("fre_edge.cli.export_cmd",
               "Export a fitted model as an OpenVINO IR + ONNX bundle (needs the fit extra)."),
    "quantize": ("fre_edge.cli.quantize_cmd",
                 "Quantize a bundle to INT8 with NNCF on good images (needs the fit extra)."),
    "predict": ("fre_edge.cli.predict_cmd", "Score images with a bundle (torch-free)."),
    "bench": ("fre_edge.cli.bench_cmd", "Measure a bundle's latency and FPS (torch-free)."),
    "archive": ("fre_edge.cli.archive_cmd", "Score an archive of images in partitions, resumably, on Dask or here."),
    "serve": ("fre_edge.cli.serve_cmd", "Serve bundles over the KServe v2 protocol (needs the serve extra)."),
    "repository": ("fre_edge.cli.repository_cmd", "Lay out bundles as a model repository for OVMS and Triton."),
    "model-api": ("fre_edge.cli.model_api_cmd", "Write a bundle as an OpenVINO Model API AnomalyDetection model."),
    "line": ("fre_edge.cli.line_cmd", "Run a bundle on a line: sources in, verdicts to MQTT, OPC UA and more, "
                                      "nothing lost (needs the line extra)."),
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
        with warnings.catch_warnings():
            warnings.simplefilter("always", FreEdgeWarning)
            shown = warnings.showwarning

            def show(message, category, *args, **kwargs):
                if issubclass(category, FreEdgeWarning):
                    click.echo(f"warning: {message}", err=True)
                elif os.environ.get("FRE_EDGE_DEBUG") == "1":  # libraries' own warnings: for debugging only
                    shown(message, category, *args, **kwargs)

            warnings.showwarning = show
            return self._invoke(ctx)

    def _invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except FreEdgeError as exc:
            click.echo(f"Error: {exc}", err=True)
            ctx.exit(EXIT_ERROR)
        except click.UsageError as exc:  # a bad option or argument of a subcommand: one line, not click's usage block
            where = f"fre-edge {exc.ctx.info_name}" if exc.ctx is not None and exc.ctx is not ctx else "fre-edge"
            click.echo(f"Error: {exc.format_message()} (see: {where} --help)", err=True)
            ctx.exit(EXIT_ERROR)
        except (click.exceptions.Exit, click.Abort, click.ClickException):
            raise
        except BrokenPipeError:  # `fre-edge predict ... | head`: the reader has gone (Python's documented recipe)
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            ctx.exit(EXIT_INTERRUPTED)
        except KeyboardInterrupt:
            click.echo("Interrupted; nothing was written for the output in progress", err=True)
            ctx.exit(EXIT_INTERRUPTED)
        except OSError as exc:
            if exc.errno not in MACHINE_ERRNOS:
                self._internal(ctx, exc)
            where = f"{exc.filename}: " if exc.filename else ""
            click.echo(f"Error: {where}{exc.strerror}; {MACHINE_ERRNOS[exc.errno]} (nothing was written for the "
                       f"output in progress)", err=True)
            ctx.exit(EXIT_ERROR)
        except ImportError as exc:
            if exc.name and exc.name.split(".")[0] in FIT_MODULES:
                click.echo(f'Error: this command needs {exc.name}; run: pip install "fre-edge[fit]"', err=True)
                ctx.exit(EXIT_ERROR)
            self._internal(ctx, exc)
        except Exception as exc:  # noqa: BLE001 - anything else is a bug: one line, its own status
            self._internal(ctx, exc)

    @staticmethod
    def _internal(ctx, exc: BaseException):
        if os.environ.get("FRE_EDGE_DEBUG") == "1":
            traceback.print_exception(exc, file=sys.stderr)
        reason = " ".join(str(exc).split())[:300]
        click.echo(f"Internal error: {exc.__class__.__name__}: {reason} (an fre-edge bug; FRE_EDGE_DEBUG=1 shows "
                   f"the traceback to report)", err=True)
        ctx.exit(EXIT_INTERNAL)


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="fre-edge")
def cli():
    """fre-edge: fit FRE anomaly detection on good images, export one bundle, run it fast on the CPU."""


def main(argv=None):
    try:
        code = cli.main(args=argv if argv is not None else sys.argv[1:], prog_name="fre-edge",
                        standalone_mode=False)
    except click.ClickException as exc:  # before a subcommand runs: an unknown command, say
        exc.show()
        code = exc.exit_code
    except (click.Abort, KeyboardInterrupt):  # Ctrl-C outside a subcommand
        click.echo("Interrupted", err=True)
        code = EXIT_INTERRUPTED
    sys.exit(code if isinstance(code, int) else 0)
