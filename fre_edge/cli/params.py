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
