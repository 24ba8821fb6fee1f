"""Option types shared by the commands (torch-free)."""

from __future__ import annotations

import math

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
