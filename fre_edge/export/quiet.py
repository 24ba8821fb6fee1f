"""NNCF without its noise: torch's "No CUDA runtime" line at import, NNCF's log, and its progress bars and
tables (drawn by rich on stdout, where the command's JSON goes). With ``progress`` the bars go to stderr;
without, nowhere."""

from __future__ import annotations

import contextlib
import logging
import os
import sys


def import_nncf(progress: bool = False):
    import torch  # noqa: F401 - first, so that its CUDA probe below is logged through a logger we set

    logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)
    import nncf

    nncf.set_log_level(logging.WARNING if progress else logging.ERROR)
    return nncf


@contextlib.contextmanager
def nncf_output(progress: bool = False):
    """Inside: NNCF's bars and tables on stderr (``progress``) or discarded; stdout stays the command's."""
    if progress:
        with contextlib.redirect_stdout(sys.stderr):
            yield
        return
    with open(os.devnull, "w") as sink, contextlib.redirect_stdout(sink):
        yield
