"""The station's journal: every verdict on disk before any sink sees it; each sink reads it in order from its
own cursor.

Layout of the journal folder::

    seg-000000000001.jsonl   verdicts, one JSON object a line, from the sequence number in the name on
    cursors/NAME.json        {"seq": S}: the last verdict sink NAME has delivered
    pictures/SEQ.jpg         a verdict's picture, kept only for sinks that send pictures

Guarantee: a verdict is appended (one ``write`` of a whole line) and fsynced (unless ``sync=False``) before
any sink reads it and before its source is told (a file moved, a push answered); a sink moves its cursor only
after its peer acknowledged a message, so every verdict reaches every sink **at least once, in order per
sink**. After a crash between an acknowledgement and the cursor's write, the next start sends that verdict
again with the same ``id``: a consumer drops a repeat by its id.

Group commit: the fsync runs in a thread of its own, never in the caller's, and one fsync covers every line
written since the last one (``append``'s ``then`` runs once its line is on disk). Inspection goes on while
the disk syncs, and a fast line pays one fsync for several verdicts.

Disk bound: segments every cursor has passed are deleted. When the journal would exceed ``max_bytes``
(a sink away for a long time), the oldest segment is deleted even if a sink has not delivered it, that
sink's cursor moves past it and the loss is counted (``dropped``, in the metrics and the station's log):
inspection never stops for a full journal. At about 400 bytes a verdict, the default 1 GiB holds over two
million verdicts, weeks of a fast line.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections import deque
from pathlib import Path

from ..errors import FreEdgeError

log = logging.getLogger("fre_edge.line")

SEGMENT_BYTES = 8 << 20
DEFAULT_MAX_BYTES = 1 << 30


def _seg_name(first: int) -> str:
    return f"seg-{first:012d}.jsonl"


class Journal:
    """Append verdicts, read them per sink from a cursor, delete what every sink has delivered."""

    def __init__(self, folder: str | Path, sinks: list[str], *, station: str = "station",
                 max_bytes: int = DEFAULT_MAX_BYTES, sync: bool = True, segment_bytes: int = SEGMENT_BYTES):
        self.folder, self.sync, self.station = Path(folder), sync, station
        self.max_bytes, self.segment_bytes = int(max_bytes), int(segment_bytes)
        try:
            (self.folder / "cursors").mkdir(parents=True, exist_ok=True)
            (self.folder / "pictures").mkdir(exist_ok=True)
        except OSError as exc:
            raise FreEdgeError(f"journal {self.folder}: cannot create it ({exc.strerror}); choose a writable "
                               f"folder") from None
        self._lock = threading.Condition()
        self.dropped = {name: 0 for name in sinks}
        self.cursors = {name: self._read_cursor(name) for name in sinks}
        self.last_seq = self._recover()
        for name in sinks:  # a cursor past the end (a journal folder replaced by hand): start at the end
            self.cursors[name] = min(self.cursors[name], self.last_seq)
        self._fd = None
        self._open_tail()
        self.durable_seq = self.last_seq  # lines up to here are on disk (the tail is synced once at start)
        self._then: deque = deque()  # (seq, record, callback): run once seq is on disk
        self._closing = False
        self._syncer = None
        if self.sync:
            try:
                os.fsync(self._fd)
            except OSError as exc:
                os.close(self._fd)
                raise FreEdgeError(f"journal {self.folder}: cannot sync it to disk ({exc.strerror}); choose a folder "
                                   f"on a local disk") from None
            self._syncer = threading.Thread(target=self._sync_loop, name="fre-edge-journal-sync", daemon=True)
            self._syncer.start()

    # -- writing ---------------------------------------------------------------------------------------
    def _segments(self) -> list[tuple[int, Path]]:
        out = []
        for p in self.folder.glob("seg-*.jsonl"):
            try:
                out.append((int(p.stem[4:]), p))
            except ValueError:
                continue
        return sorted(out)

    def _recover(self) -> int:
        """The last sequence number written; a line cut short by a kill is removed."""
        segs = self._segments()
        if not segs:
            return max(self.cursors.values(), default=0)
        first, path = segs[-1]
        data = path.read_bytes()
        if data and not data.endswith(b"\n"):  # a write cut short: keep whole lines only
            data = data[:data.rfind(b"\n") + 1]
            with open(path, "r+b") as f:
                f.truncate(len(data))
        lines = data.splitlines()
        if not lines:
            return first - 1
        try:
            return int(json.loads(lines[-1])["seq"])
        except (ValueError, KeyError, TypeError):
            raise FreEdgeError(f"{path}: not a journal segment fre-edge wrote; move the journal folder away") \
                from None

    def _open_tail(self) -> None:
        segs = self._segments()
        if segs and segs[-1][1].stat().st_size < self.segment_bytes:
            path = segs[-1][1]
        else:
            path = self.folder / _seg_name(self.last_seq + 1)
        self._fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        self._tail = path

    def append(self, record: dict, picture: bytes | None = None, then=None) -> dict:
        """Give ``record`` the next sequence number and its id (``STATION-SEQ``) and write it (and its
        picture) to the journal; returns it. Sinks see it, and ``then(record)`` runs (in the journal's sync
        thread), once it is on disk."""
        with self._lock:
            seq = self.last_seq + 1
            record = {**record, "id": f"{self.station}-{seq}", "seq": seq}
            if picture is not None:
                pic = self.folder / "pictures" / f"{seq}.jpg"
                pic.write_bytes(picture)
                record["picture"] = pic.name
            line = (json.dumps(record, separators=(",", ":")) + "\n").encode()
            if os.fstat(self._fd).st_size + len(line) > self.segment_bytes:
                if self.sync:  # the old segment's lines on disk before its descriptor goes
                    os.fsync(self._fd)
                os.close(self._fd)
                self._fd = os.open(self.folder / _seg_name(seq), os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
                self._tail = self.folder / _seg_name(seq)
            os.write(self._fd, line)
            self.last_seq = seq
            if not self.sync:
                self.durable_seq = seq
            elif then is not None:
                self._then.append((seq, record, then))
            self._lock.notify_all()  # the sync thread, or (without it) the sinks
        if then is not None and not self.sync:
            then(record)
        self._bound()
        return record

    def _sync_loop(self) -> None:
        """fsync what was written since the last fsync, mark it durable, run its callbacks; until closed."""
        while True:
            with self._lock:
                self._lock.wait_for(lambda: self.last_seq > self.durable_seq or self._closing)
                if self.last_seq <= self.durable_seq:
                    return
                target, fd = self.last_seq, os.dup(self._fd)  # a segment rotated meanwhile was synced first
            try:
                os.fsync(fd)
            except OSError as exc:  # the disk failed: said, and tried again; nothing is marked on disk meanwhile
                log.error("journal %s: cannot sync (%s); verdicts wait", self.folder, exc.strerror)
                if self._closing:  # stopping: what is written stays for the next start to recover
                    return
                time.sleep(1.0)
                continue
            finally:
                os.close(fd)
            done = []
            with self._lock:
                self.durable_seq = max(self.durable_seq, target)
                while self._then and self._then[0][0] <= target:
                    done.append(self._then.popleft())
                self._lock.notify_all()
            for _, record, then in done:
                try:
                    then(record)
                except Exception:  # noqa: BLE001 - a source's callback must not stop the journal
                    log.exception("after journaling %s", record.get("id"))

    def recent(self, source: str, segments: int = 2) -> dict[str, str]:
        """{part: verdict} of ``source``'s verdicts in the last ``segments`` segments: what a folder source
        restarted after a kill has already scored (its files not yet moved), so they are not scored twice."""
        out = {}
        for _, path in self._segments()[-segments:]:
            with open(path, "rb") as f:
                for line in f:
                    if line.endswith(b"\n"):
                        r = json.loads(line)
                        if r.get("source") == source:
                            out[r.get("part")] = r.get("verdict")
        return out

    # -- reading ---------------------------------------------------------------------------------------
    def reader(self, sink: str) -> "Reader":
        return Reader(self, sink)

    def wait(self, after: int, timeout: float) -> bool:
        """Wait until a verdict after ``after`` is on disk; whether one is."""
        with self._lock:
            return self._lock.wait_for(lambda: self.durable_seq > after, timeout)

    def _read_cursor(self, name: str) -> int:
        path = self.folder / "cursors" / f"{name}.json"
        try:
            return int(json.loads(path.read_text())["seq"])
        except FileNotFoundError:
            return 0
        except (OSError, ValueError, KeyError, TypeError):
            raise FreEdgeError(f"{path}: not a cursor fre-edge wrote; remove it (its sink then starts from the "
                               f"journal's oldest verdict)") from None

    def commit(self, name: str, seq: int, *, persist: bool = True) -> None:
        """Sink ``name`` has delivered everything up to ``seq``. With ``persist`` False the cursor moves in
        memory only (the sink persists it a little later: a crash in between repeats those messages, which
        their ids mark)."""
        with self._lock:
            self.cursors[name] = seq
        if persist:
            path = self.folder / "cursors" / f"{name}.json"
            tmp = path.with_name(f".{path.name}.tmp")
            tmp.write_text(json.dumps({"seq": seq}))
            os.replace(tmp, path)
            self._collect()

    def backlog(self, name: str) -> int:
        return self.last_seq - self.cursors[name]

    # -- the disk bound --------------------------------------------------------------------------------
    def _collect(self) -> None:
        """Delete segments (and their pictures) that every sink has delivered."""
        with self._lock:
            done = min(self.cursors.values(), default=self.last_seq)
            segs = self._segments()
            for (first, path), (nxt, _) in zip(segs, segs[1:]):
                if nxt - 1 <= done and path != self._tail:
                    self._delete(first, nxt - 1, path)

    def _delete(self, first: int, last: int, path: Path) -> None:
        path.unlink(missing_ok=True)
        for seq in range(first, last + 1):
            (self.folder / "pictures" / f"{seq}.jpg").unlink(missing_ok=True)

    def size(self) -> int:
        return sum(p.stat().st_size for p in self.folder.rglob("*") if p.is_file())

    def _bound(self) -> None:
        if self.max_bytes <= 0 or self.last_seq % 64:  # checked every 64 verdicts
            return
        with self._lock:
            while self.size() > self.max_bytes:
                segs = self._segments()
                if len(segs) < 2:
                    return
                (first, path), (nxt, _) = segs[0], segs[1]
                for name, cur in self.cursors.items():
                    if cur < nxt - 1:
                        self.dropped[name] += nxt - 1 - max(cur, first - 1)
                        self.cursors[name] = nxt - 1
                self._delete(first, nxt - 1, path)

    def close(self) -> None:
        """Sync what is written (its callbacks run) and close."""
        if self._syncer is not None:
            with self._lock:
                self._closing = True
                self._lock.notify_all()
            self._syncer.join()
            self._syncer = None
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


class Reader:
    """Verdicts after sink ``name``'s cursor, in order, read from the segment files."""

    def __init__(self, journal: Journal, name: str):
        self.journal, self.name = journal, name
        self.next_seq = journal.cursors[name] + 1
        self._file = None
        self._path: Path | None = None

    def _segment_of(self, seq: int) -> Path | None:
        """The segment that holds ``seq`` (or, after a drop at the bound, the oldest one kept)."""
        segs = self.journal._segments()
        chosen = None
        for first, path in segs:
            if first <= seq:
                chosen = path
        if chosen is None and segs:  # dropped at the bound: go on from the oldest verdict kept
            self.next_seq = segs[0][0]
            chosen = segs[0][1]
        return chosen

    def _open(self, path: Path) -> None:
        if self._file:
            self._file.close()
        self._path, self._file = path, open(path, "rb")

    def next(self, timeout: float) -> dict | None:
        """The next verdict for this sink, or None when none came within ``timeout`` seconds."""
        if self.journal.cursors[self.name] >= self.next_seq:  # moved past at the bound
            self.next_seq = self.journal.cursors[self.name] + 1
            self._path = None
        if not self.journal.wait(self.next_seq - 1, timeout):
            return None
        for _ in range(3):
            if self._path is None:
                path = self._segment_of(self.next_seq)
                if path is None:
                    return None
                self._open(path)
            while True:
                pos = self._file.tell()
                line = self._file.readline()
                if not line:
                    break
                if not line.endswith(b"\n"):  # being written: read it again later
                    self._file.seek(pos)
                    return None
                record = json.loads(line)
                if record["seq"] < self.next_seq:
                    continue
                if record["seq"] > self.journal.durable_seq:  # written, not yet on disk: later
                    self._file.seek(pos)
                    return None
                self.next_seq = record["seq"] + 1
                return record
            newer = self._segment_of(self.next_seq)  # the end of this segment: the next one, if there is one
            if newer is None or newer == self._path:
                return None
            self._open(newer)
        return None

    def caught_up(self) -> bool:
        return self.next_seq > self.journal.last_seq

    def close(self) -> None:
        if self._file:
            self._file.close()
            self._file = None

    def picture(self, record: dict) -> bytes | None:
        name = record.get("picture")
        if not name:
            return None
        try:
            return (self.journal.folder / "pictures" / name).read_bytes()
        except OSError:
            return None
