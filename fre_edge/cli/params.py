"""Option types shared by the commands (torch-free)."""

from __future__ import annotations

import math
from pathlib import Path

import click


class FiniteFloat(click.FloatRange):
    """A ``click.FloatRange`` that also refuses NaN and infinity (NaN compares false with every bound, so a
    plain range lets it through)."""

    def convert(self, value, param, ctx):
        number = click.FLOAT.convert(value, param, ctx)
        if not math.isfinite(number):
            self.fail(f"{value!r} is not a finite number", param, ctx)
        return super().convert(number, param, ctx)


POSITIVE = FiniteFloat(min=0, min_open=True)


class InputSize(click.ParamType):
    """``auto``, ``N`` (square) or ``HxW`` (height x width), each side 32-2048 px; gives "auto" or (h, w)."""

    name = "auto|N|HxW"

    def convert(self, value, param, ctx):
        if isinstance(value, tuple) or value == "auto":
            return value
        from ..errors import FreEdgeError
        from ..images import input_hw

        try:
            hw = input_hw(str(value))
        except FreEdgeError:
            self.fail(f"{value!r} is not auto, N or HxW; use e.g. auto, 256 or 192x480 (height x width)", param, ctx)
        if not all(32 <= x <= 2048 for x in hw):
            self.fail(f"{value!r}: each side must be 32 to 2048 pixels", param, ctx)
        return hw


INPUT_SIZE_HELP = ("Model input: auto (the backbone's square pixel budget, in the fitting images' median aspect "
                   "when it is 1.25 or more from square), N (N x N) or HxW, e.g. 192x480 (height x width).")


def server_options(what: str):
    """``--server URL`` and ``--model-name NAME``, as predict and bench take them; ``what``: what the server does."""
    def decorate(f):
        f = click.option("--model-name", default=None,
                         help="With --server: the model's name there (default: the bundle folder's name).")(f)
        return click.option("--server", default=None, metavar="URL",
                            help=f"{what} (grpc://HOST:PORT or http://HOST:PORT: `fre-edge serve`, OVMS, Triton).")(f)
    return decorate


def remote_detector(bundle, server: str, model_name: str | None, backend: str, backbone_only: bool = False):
    """The detector of --server: the options that choose a local runtime are refused, not ignored."""
    from ..errors import FreEdgeError
    from ..runtime import load_detector

    if backend != "openvino":
        raise FreEdgeError("--backend chooses a local runtime; drop it with --server (the server runs the graph)")
    if backbone_only:
        raise FreEdgeError("--backbone-only times a local graph; drop it with --server")
    return load_detector(bundle, backend="kserve", url=server, model_name=model_name)


class Aliased(click.Option):
    """An option whose help shows its first ``shown`` names (``-o, --output``) while older spellings given
    after them (``--out``) keep working, unlisted."""

    def __init__(self, *args, shown: int = 2, **kwargs):
        super().__init__(*args, **kwargs)
        self.shown = shown

    def get_help_record(self, ctx):
        opts, self.opts = self.opts, self.opts[:self.shown]
        try:
            return super().get_help_record(ctx)
        finally:
            self.opts = opts

    def get_error_hint(self, ctx):  # an error names the option as the help does
        return " / ".join(f"'{x}'" for x in self.opts[:self.shown])


def output_option(help: str, *, required: bool = True, file_okay: bool = False):
    """``-o/--output PATH`` (``--out`` also accepted) as every command that writes takes it."""
    return click.option("-o", "--output", "--out", "output", cls=Aliased, required=required, default=None,
                        type=click.Path(file_okay=file_okay, path_type=Path), help=help)


def batch_size_option(default: int, help: str, maximum: int = 1024):
    """``--batch-size N`` (``--batch`` also accepted)."""
    return click.option("--batch-size", "--batch", "batch_size", cls=Aliased, shown=1,
                        type=click.IntRange(1, maximum), default=default, show_default=True, help=help)


QUIET_HELP = "No progress bars and no libraries' output; errors and warnings still print."
