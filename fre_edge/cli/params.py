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
