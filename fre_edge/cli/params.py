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


def check_remote(backend: str, backbone_only: bool = False) -> None:
    """With --server the server chooses the runtime: refuse the options that choose a local one."""
    from ..errors import FreEdgeError

    if backend != "openvino":
        raise FreEdgeError("--backend chooses a local runtime; drop it with --server (the server runs the graph)")
    if backbone_only:
        raise FreEdgeError("--backbone-only times a local graph; drop it with --server")
