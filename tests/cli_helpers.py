"""The CLI run in-process, and the check that a failure is one line (shared by the test modules)."""

from __future__ import annotations

from click.testing import CliRunner

from fre_edge.cli import cli


def run(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


def one_error_line(r, code=2):
    """The command failed with ``code`` and said so in exactly one line, with no traceback."""
    assert r.exit_code == code, (r.exit_code, r.output)
    lines = [line for line in r.stderr.splitlines() if line.startswith(("Error:", "Internal error:"))]
    assert len(lines) == 1 and "Traceback" not in r.output, r.output
    return lines[0]
