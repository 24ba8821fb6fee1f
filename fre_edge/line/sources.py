"""Where a station's pictures come from. Each source is a thread that turns what arrives into a :class:`Part`
(read and resized for the model right there, so decoding overlaps inference) and hands it to ``submit``.

- :class:`FolderSource`: files dropped into a folder by the camera software; a file is scored once it is
  complete: closed by its writer or renamed into the folder (inotify, on Linux), or else its size unchanged
  for ``settle`` seconds, and in both cases the picture readable; then left, moved to ``good/`` or
  ``reject/`` beside it, or deleted.
- :class:`CameraSource`: a camera index, a video file or a stream URL through OpenCV; a dropped stream is
  opened again (backing off up to 5 s); ``fps`` caps the frame rate.
- :class:`PushSource`: camera software POSTs a picture over HTTP and gets the verdict in the answer.
"""

from __future__ import annotations

import io
import logging
import os
import shutil
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from ..errors import FreEdgeError
from ..images import is_image_file
from .http import HttpService, respond_json

log = logging.getLogger("fre_edge.line")
TEMP_SUFFIXES = (".tmp", ".part", ".partial", ".crdownload", ".filepart", ".swp")
RETRY_UNREADABLE_S = 10.0  # a file that cannot be read yet is tried again until it has not changed for this long


def now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


@dataclass
class Part:
    """One picture to inspect, ready for the model."""

    source: str
    part: str  # the file's name, the frame's number or the id the sender gave
    prepared: tuple | None  # (model input, (height, width)); None when it could not be read
    arrived: float  # time.monotonic() when it arrived (a file complete, a frame captured, a request received)
    time: str  # the same moment as UTC ISO 8601
    image: object = None  # the picture (path or RGB array), kept only for sinks that send pictures
    error: str | None = None
    on_done: list = field(default_factory=list)  # callbacks(record) once the verdict is journaled


class Source(threading.Thread):
    def __init__(self, cfg, station):
        super().__init__(name=f"fre-edge-source-{cfg.name}", daemon=True)
        self.cfg, self.station = cfg, station
        self.stopping = threading.Event()
        self.state = "starting"

    def stop(self) -> None:
        self.stopping.set()

    def make_part(self, name: str, image, arrived: float, when: str) -> Part:
        try:
            prepared = self.station.detector.prepare(image)
            error = None
        except FreEdgeError as exc:
            prepared, error = None, str(exc)
        keep = image if self.station.wants_pictures else None
        return Part(self.cfg.name, name, prepared, arrived, when, image=keep, error=error)


class FolderSource(Source):
    """Pictures dropped into ``cfg.path`` (not its subfolders), scored once complete."""

    POLL_S = 0.02

    def __init__(self, cfg, station):
        super().__init__(cfg, station)
        self.folder = Path(cfg.path)
        self.seen: dict[str, tuple[int, int]] = {}  # name -> (size, mtime_ns) of files already handled
        self.pending: dict[str, tuple[int, int, float, float]] = {}  # name -> (size, mtime_ns, since, first_seen)
        if not cfg.existing:
            for entry in self._entries():
                st = entry.stat()
                self.seen[entry.name] = (st.st_size, st.st_mtime_ns)
        elif cfg.after != "keep":  # a restart after a kill: files already journaled are moved, not scored again
            done = station.journal.recent(cfg.name)
            for entry in list(self._entries()):
                if entry.name in done:
                    self._after(self.folder / entry.name, {"verdict": done[entry.name]})

    def _entries(self):
        try:
            with os.scandir(self.folder) as it:
                for e in it:
                    if (e.is_file(follow_symlinks=False) and not e.name.startswith(".")
                            and not e.name.lower().endswith(TEMP_SUFFIXES) and is_image_file(Path(e.name))):
                        yield e
        except FileNotFoundError:
            return

    def run(self) -> None:
        from .watch import open_watch

        watch = open_watch(str(self.folder))
        self.state = "watching (inotify)" if watch else "watching (polling)"
        last_scan = 0.0
        try:
            while not self.stopping.is_set():
                if watch is None:
                    self._scan(self.cfg.settle)
                    self.stopping.wait(self.POLL_S)
                    continue
                for name in watch.names(0.2):  # closed after writing, or renamed in: complete now
                    self._complete(name)
                now = time.monotonic()
                if watch.overflowed or now - last_scan > 1.0:  # what inotify could not tell: polled, slowly
                    watch.overflowed, last_scan = False, now
                    self._scan(max(self.cfg.settle, 2.0))
        finally:
            if watch is not None:
                watch.close()

    def _complete(self, name: str) -> None:
        if name.startswith(".") or name.lower().endswith(TEMP_SUFFIXES) or not is_image_file(Path(name)):
            return
        try:
            st = (self.folder / name).stat()
        except FileNotFoundError:
            return
        sig = (st.st_size, st.st_mtime_ns)
        if self.seen.get(name) == sig or sig[0] == 0:
            return
        now = time.monotonic()
        self._take(name, sig, (*sig, now, now))

    def _scan(self, settle: float) -> None:
        """Take the files that stayed the same for ``settle`` seconds, oldest first (then by name)."""
        now = time.monotonic()
        present, ready = set(), []
        for entry in self._entries():
            present.add(entry.name)
            try:
                st = entry.stat()
            except FileNotFoundError:
                continue
            sig = (st.st_size, st.st_mtime_ns)
            if self.seen.get(entry.name) == sig:
                continue
            old = self.pending.get(entry.name)
            if old is None or old[:2] != sig:
                self.pending[entry.name] = (*sig, now, old[3] if old else now)
                continue
            if sig[0] > 0 and now - old[2] >= settle:
                ready.append((sig[1], entry.name, sig, old))
        for _, name, sig, old in sorted(ready):
            self._take(name, sig, old)
        for name in list(self.seen):  # forget files that are gone: memory stays bounded
            if name not in present:
                self.seen.pop(name, None)
        for name in list(self.pending):
            if name not in present:
                self.pending.pop(name, None)

    def _take(self, name: str, sig, pending) -> None:
        path = self.folder / name
        part = self.make_part(name, path, time.monotonic(), now_iso())
        if part.error and time.monotonic() - pending[2] < RETRY_UNREADABLE_S:
            self.pending.setdefault(name, pending)  # not readable yet (a slow writer?): tried again by the scan
            return
        self.pending.pop(name, None)
        self.seen[name] = sig
        if self.cfg.after != "keep":
            part.on_done.append(lambda record, path=path: self._after(path, record))
        self.station.submit(part)

    def _after(self, path: Path, record: dict) -> None:
        try:
            if self.cfg.after == "delete":
                path.unlink(missing_ok=True)
            else:
                sub = "reject" if record.get("verdict") != "good" else "good"
                (path.parent / sub).mkdir(exist_ok=True)
                shutil.move(str(path), path.parent / sub / path.name)
        except OSError as exc:
            log.warning("source %s: cannot %s %s (%s)", self.cfg.name, self.cfg.after, path, exc)


class CameraSource(Source):
    """Frames from OpenCV's VideoCapture: a camera index, a video file or a stream URL."""

    def _open(self):
        import cv2  # (FFmpeg's own log quietened in run(): a dropped stream is the station's to report)

        target = int(self.cfg.path) if self.cfg.path.isdigit() else self.cfg.path
        cap = cv2.VideoCapture(target)
        return cap if cap.isOpened() else None

    def run(self) -> None:
        os.environ.setdefault("OPENCV_FFMPEG_LOGLEVEL", "-8")
        os.environ.setdefault("OPENCV_LOG_LEVEL", "ERROR")
        try:
            import cv2  # noqa: F401
        except ImportError:
            self.state = 'error: OpenCV is missing; run: pip install "fre-edge[line]"'
            log.error("source %s: %s", self.cfg.name, self.state)
            return
        is_file = not (self.cfg.path.isdigit() or "://" in self.cfg.path)
        backoff, frame_no, last = 0.5, 0, 0.0
        self.reconnects = 0
        while not self.stopping.is_set():
            cap = self._open()
            if cap is None:
                self.state = "disconnected"
                if is_file:
                    log.error("source %s: cannot open %s", self.cfg.name, self.cfg.path)
                    return
                self.stopping.wait(backoff)
                backoff = min(5.0, backoff * 2)
                self.reconnects += 1
                continue
            self.state, backoff = "connected", 0.5
            while not self.stopping.is_set():
                ok, frame = cap.read()
                if not ok:
                    break
                arrived = time.monotonic()
                if self.cfg.fps and arrived - last < 1.0 / self.cfg.fps:
                    continue
                last = arrived
                frame_no += 1
                rgb = np.ascontiguousarray(frame[..., ::-1]) if frame.ndim == 3 else frame
                self.station.submit(self.make_part(f"frame-{frame_no:08d}", rgb, arrived, now_iso()),
                                    block=is_file)
            cap.release()
            if is_file:
                self.state = "ended"
                log.info("source %s: %s ended after %d frames", self.cfg.name, self.cfg.path, frame_no)
                return
            self.state = "disconnected"
            log.warning("source %s: the stream dropped; opening it again", self.cfg.name)
            self.reconnects += 1
            self.stopping.wait(backoff)


class PushSource(Source):
    """``POST /`` (any path) with a picture as the body answers with the verdict's JSON once it is journaled.
    An ``X-Part-Id`` header names the part. Loopback unless the configuration names another address."""

    MAX_BYTES = 64 << 20
    WAIT_S = 30.0

    def __init__(self, cfg, station):
        super().__init__(cfg, station)
        self.http = HttpService(cfg.host, cfg.port, post=self.handle, what=f"source {cfg.name}")

    def handle(self, req) -> None:
        arrived, when = time.monotonic(), now_iso()
        length = req.headers.get("Content-Length")
        if length is None or not length.isdigit() or int(length) > self.MAX_BYTES:
            return respond_json(req, 400 if length is None or not length.isdigit() else 413,
                                {"error": f"send the picture as the body, with its Content-Length (at most "
                                          f"{self.MAX_BYTES >> 20} MB)"})
        body = req.rfile.read(int(length))
        if self.stopping.is_set():
            return respond_json(req, 503, {"error": "the station is stopping"})
        from PIL import Image, UnidentifiedImageError

        try:
            with Image.open(io.BytesIO(body)) as im:
                image = np.asarray(im.convert("RGB"))
        except (UnidentifiedImageError, OSError, ValueError) as exc:
            return respond_json(req, 400, {"error": f"the body is not a picture ({exc}); send PNG or JPEG bytes"})
        name = req.headers.get("X-Part-Id") or f"push-{int(time.time() * 1000)}"
        part = self.make_part(name[:200], image, arrived, when)
        done, box = threading.Event(), {}
        part.on_done.append(lambda record: (box.update(record=record), done.set()))
        self.station.submit(part)
        if not done.wait(self.WAIT_S):
            return respond_json(req, 504, {"error": "no verdict within 30 s; the station is overloaded"})
        respond_json(req, 200, box["record"])

    def run(self) -> None:
        self.state = f"listening on {self.cfg.host}:{self.http.port}"
        self.http.serve_forever()

    def stop(self) -> None:
        super().stop()
        self.http.stop()


SOURCES = {"folder": FolderSource, "camera": CameraSource, "push": PushSource}
