"""Writing outputs without ever losing a user's file (torch-free, numpy-free).

Every path fre-edge writes goes through the same checks, before any work:

- :func:`check_output` for a folder (a model, a bundle, predictions, a repository, eval pictures, ...),
  :func:`check_output_file` for a file (``--json``): it must not be, hold or lie inside one of the
  command's inputs, nor be the current folder or one above it; its parent must be writable; an existing
  one is replaced only with ``force`` and only when fre-edge itself wrote it as the same kind of output
  (its marker is there and nothing foreign is in it).
- :func:`atomic_dir` writes into a temporary folder beside the target and renames it into place when
  complete, so a killed run never leaves a half-written output. The final rename refuses a target that
  appeared meanwhile (two runs racing for one new folder). Temporary folders left by killed runs
  (``.NAME.partial-PID-*``) are removed by the next run into the same place, with a warning.

Folders and files are created with the user's umask (``tempfile.mkdtemp`` would make them 0700).
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import tempfile
import warnings
from pathlib import Path
from typing import Iterable

from .errors import FreEdgeError


class FreEdgeWarning(UserWarning):
    """Something the user should know that does not stop the command (the CLI prints it as one line)."""


# kind -> (marker file, what the marker must say, other entries fre-edge writes there)
KINDS: dict[str, tuple[str, dict, frozenset[str]]] = {
    "model": ("model.json", {"kind": "fre-edge model"},
              frozenset({"model.safetensors", "eval.json", "eval_pictures"})),
    "bundle": ("manifest.json", {"model_type": "fre"},
               frozenset({"model.xml", "model.bin", "model.onnx", "eval.json", "eval_pictures"})),
    "predictions": ("scores.json", {"kind": "fre-edge predictions"}, frozenset({"scores.csv"})),
    "repository": ("fre-edge-repository.json", {"kind": "fre-edge model repository"}, frozenset({"config.json"})),
    "model-api": ("model_api.json", {"kind": "fre-edge model api"}, frozenset({"model.xml", "model.bin"})),
    "pictures": ("pictures.json", {"kind": "fre-edge eval pictures"}, frozenset()),
}
# kind of a JSON file output -> what its "kind" field says
FILE_KINDS = {"eval": "fre-edge eval", "bench": "fre-edge bench"}
WHAT = {"model": "a model folder (fre-edge fit)", "bundle": "a bundle (fre-edge export/quantize)",
        "predictions": "a predictions folder (fre-edge predict)",
        "repository": "a model repository (fre-edge repository)",
        "model-api": "a Model API model (fre-edge model-api)",
        "pictures": "a folder of eval pictures (fre-edge eval)"}
PICTURE_SUFFIXES = (".png", ".jpg", ".jpeg")


def _marker(folder: Path, kind: str) -> dict | None:
    """The parsed marker file of ``kind`` in ``folder`` when it says what fre-edge writes, else None."""
    name, expect, _ = KINDS[kind]
    try:
        data = json.loads((folder / name).read_text())
    except (OSError, ValueError):
        if (kind == "pictures" and folder.name == "eval_pictures" and folder.is_dir()  # a model's, from before
                and any(_marker(folder.parent, k) is not None for k in ("model", "bundle"))  # the marker
                and all(p.is_file() and p.suffix.lower() == ".png" for p in folder.iterdir())):
            return {}
        return None
    if not isinstance(data, dict) or any(data.get(k) != v for k, v in expect.items()):
        return None
    return data


def output_kind(folder: Path) -> str | None:
    """The kind of fre-edge output ``folder`` is (model, bundle, predictions), or None."""
    for kind in KINDS:
        if _marker(folder, kind) is not None:
            return kind
    return None


def _foreign(folder: Path, kind: str) -> list[str]:
    """Entries of ``folder`` that fre-edge did not write as an output of ``kind``."""
    data = _marker(folder, kind)
    marker, _, allowed = KINDS[kind]
    allowed = set(allowed) | {marker}
    if kind == "predictions" and data is not None:
        allowed |= {r["overlay"] for r in data.get("images", []) if isinstance(r, dict) and r.get("overlay")}
    if kind == "pictures":
        allowed |= {p.name for p in folder.iterdir() if p.is_file() and p.suffix.lower() == ".png"}
    models = set(data.get("models", {})) if kind == "repository" and data is not None else set()
    foreign = []
    for entry in sorted(folder.iterdir()):
        if entry.name.startswith(".") and ".partial-" in entry.name and not entry.is_symlink():
            continue  # a temporary file of fre-edge's own (write_text_atomic), killed before its rename
        if (entry.name not in allowed and entry.name not in models) or entry.is_symlink():
            foreign.append(entry.name)
        elif entry.is_dir() and entry.name == "eval_pictures":
            foreign += [f"{entry.name}/{p.name}" for p in sorted(entry.iterdir())
                        if not (p.is_file() and (p.suffix.lower() in PICTURE_SUFFIXES or p.name == "pictures.json"))]
        elif entry.is_dir() and entry.name not in models:
            foreign.append(entry.name)
    return foreign


def _inside(child: Path, parent: Path) -> bool:
    return child == parent or parent in child.parents


def check_not_input(out: str | Path, inputs: Iterable[str | Path | None] = ()) -> Path:
    """Refuse an output path that is, holds or lies inside one of the inputs, or that is the current folder
    or one above it (replacing it would pull the folder from under the user's shell)."""
    out = Path(out)
    real = out.resolve()
    for inp in inputs:
        if inp is None:
            continue
        inp_real = Path(inp).resolve()
        if _inside(inp_real, real):
            what = "is" if inp_real == real else "holds"
            raise FreEdgeError(f"{out} {what} the input {inp}; choose an output outside the inputs")
        if _inside(real, inp_real):
            raise FreEdgeError(f"{out} is inside the input {inp}; choose an output outside the inputs")
    if _inside(Path.cwd().resolve(), real):
        raise FreEdgeError(f"{out} is the current folder or holds it; choose an output folder beside it, "
                           f"not around it")
    return out


def check_writable(out: str | Path) -> None:
    """Refuse an output whose nearest existing parent folder cannot be written (read-only disk, no
    permission), before any work: a fit of an hour should not fail at its last step."""
    parent = Path(out).resolve().parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        raise FreEdgeError(f"{parent} is not a folder; choose an output inside a folder")
    try:
        probe = tempfile.mkdtemp(prefix=".fre-edge-probe-", dir=parent)
    except OSError as exc:
        raise FreEdgeError(f"cannot write in {parent} ({exc.strerror}); choose an output on a writable "
                           f"disk") from None
    os.rmdir(probe)


def check_output(out: str | Path, *, kind: str, force: bool, inputs: Iterable[str | Path | None] = ()) -> Path:
    """Refuse (one line each) an output that is or holds an input, or an existing folder that ``--force``
    may not replace; returns ``out`` as a Path. Nothing is written."""
    out = check_not_input(out, inputs)
    if not (out.exists() or out.is_symlink()):
        check_writable(out)
        return out
    if not force:
        raise FreEdgeError(f"{out} already exists; choose another output folder or pass --force")
    if out.is_symlink() or not out.is_dir():
        raise FreEdgeError(f"{out} exists and is not a folder; --force replaces only {WHAT[kind]}, "
                           f"choose another output")
    if _marker(out, kind) is None:
        found = output_kind(out)
        is_what = f"is {WHAT[found]}" if found else "was not written by fre-edge"
        raise FreEdgeError(f"{out} {is_what}; --force replaces only {WHAT[kind]}, choose another output folder")
    foreign = _foreign(out, kind)
    if foreign:
        shown = ", ".join(foreign[:3]) + (f" and {len(foreign) - 3} more" if len(foreign) > 3 else "")
        raise FreEdgeError(f"{out} holds files fre-edge did not write ({shown}); --force will not delete them, "
                           f"move them or choose another output folder")
    check_writable(out)
    return out


def check_output_file(path: str | Path, *, kind: str, force: bool, inputs: Iterable[str | Path | None] = ()) -> Path:
    """:func:`check_output` for one JSON file of ``kind`` (:data:`FILE_KINDS`): an existing file is replaced
    only with ``force`` and only when fre-edge wrote it as that kind."""
    path = check_not_input(path, inputs)
    if path.is_dir():
        raise FreEdgeError(f"{path} is a folder; give a file name")
    if path.exists() or path.is_symlink():
        if not force:
            raise FreEdgeError(f"{path} already exists; choose another file or pass --force")
        try:
            ours = not path.is_symlink() and json.loads(path.read_text()).get("kind") == FILE_KINDS[kind]
        except (OSError, ValueError, AttributeError):
            ours = False
        if not ours:
            raise FreEdgeError(f"{path} was not written by fre-edge {kind}; --force replaces only the JSON that "
                               f"command writes, choose another file")
    check_writable(path)
    return path


def current_umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _apply_umask(root: Path) -> None:
    """Give ``root`` and everything under it the modes a plain mkdir/open would have under this umask."""
    mask = current_umask()
    for dirpath, dirnames, filenames in os.walk(root):
        os.chmod(dirpath, 0o777 & ~mask)
        for f in filenames:
            p = os.path.join(dirpath, f)
            if not os.path.islink(p):
                os.chmod(p, 0o666 & ~mask)


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _temp_prefix(final: Path, what: str) -> str:
    return f".{final.name}.{what}-{socket.gethostname()}-"


def remove_stale_temporaries(final: Path) -> list[Path]:
    """Remove temporaries that an interrupted run on this host left beside ``final`` (its process is gone)."""
    removed = []
    if not final.parent.is_dir():
        return removed
    for what in ("partial", "old"):
        prefix = _temp_prefix(final, what)
        for p in final.parent.glob(f"{glob_escape(prefix)}*"):
            pid = p.name[len(prefix):].split("-", 1)[0]
            if pid.isdigit() and not pid_alive(int(pid)) and p.is_dir() and not p.is_symlink():
                shutil.rmtree(p, ignore_errors=True)
                removed.append(p)
    if removed:
        warnings.warn(f"removed {len(removed)} temporary folder(s) left by an interrupted run "
                      f"({', '.join(p.name for p in removed)})", FreEdgeWarning, stacklevel=3)
    return removed


def glob_escape(text: str) -> str:
    return "".join(f"[{c}]" if c in "*?[" else c for c in text)


class atomic_dir:  # noqa: N801 - used as a context manager, like open()
    """``with atomic_dir(final, force, kind) as tmp:`` write into ``tmp``; on success it becomes ``final``.

    Checks the destination with :func:`check_output` when created (before any work) and again at the
    end; on an exception the temporary folder is removed and ``final`` is untouched.
    """

    def __init__(self, final: str | Path, force: bool, kind: str, inputs: Iterable[str | Path | None] = ()):
        self.final, self.force, self.kind = Path(final), force, kind
        self.inputs = list(inputs)
        check_output(self.final, kind=kind, force=force, inputs=self.inputs)
        self.tmp: Path | None = None

    def __enter__(self) -> Path:
        self.final.parent.mkdir(parents=True, exist_ok=True)
        remove_stale_temporaries(self.final)
        self.tmp = Path(tempfile.mkdtemp(prefix=f"{_temp_prefix(self.final, 'partial')}{os.getpid()}-",
                                         dir=self.final.parent))
        return self.tmp

    def __exit__(self, exc_type, exc, tb):
        if exc_type is not None:
            shutil.rmtree(self.tmp, ignore_errors=True)
            return False
        try:
            _apply_umask(self.tmp)
            self._publish()
        except BaseException:
            shutil.rmtree(self.tmp, ignore_errors=True)
            raise
        return False

    def _appeared(self) -> FreEdgeError:
        return FreEdgeError(f"{self.final} appeared while this run was writing it (another fre-edge run?); "
                            f"nothing was written, choose another output folder or pass --force")

    def _publish(self) -> None:
        final = self.final
        if final.exists() or final.is_symlink():
            if not self.force:
                raise self._appeared()
            check_output(final, kind=self.kind, force=True, inputs=self.inputs)
            old = Path(tempfile.mkdtemp(prefix=f"{_temp_prefix(final, 'old')}{os.getpid()}-", dir=final.parent))
            final.rename(old / final.name)
            self.tmp.rename(final)
            shutil.rmtree(old, ignore_errors=True)
            return
        try:
            # exclusive: of two runs racing for one new folder, only the first gets it
            os.mkdir(final, 0o700)
        except FileExistsError:
            raise self._appeared() from None
        os.rename(self.tmp, final)  # replaces the empty folder just made


def write_text_atomic(path: str | Path, text: str) -> Path:
    """Write one file so that a reader sees either the old file or the whole new one, never a part."""
    path = Path(path)
    if path.is_dir():
        raise FreEdgeError(f"{path} is a folder; give a file name")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.partial-", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.chmod(tmp, 0o666 & ~current_umask())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path
