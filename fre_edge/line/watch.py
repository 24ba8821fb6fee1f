"""Files that became complete in a folder, as Linux's inotify reports them: closed after writing
(``IN_CLOSE_WRITE``) or renamed into the folder (``IN_MOVED_TO``). No waiting for a size to settle, so a
picture is inspected the moment its writer is done. Elsewhere (another OS, a folder inotify cannot watch)
:func:`open_watch` returns None and the folder source polls sizes instead."""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import select
import struct
import sys

IN_CLOSE_WRITE, IN_MOVED_TO, IN_Q_OVERFLOW = 0x8, 0x80, 0x4000
IN_NONBLOCK, IN_CLOEXEC = 0o4000, 0o2000000
_EVENT = struct.Struct("iIII")


class Watch:
    def __init__(self, libc, fd: int):
        self._libc, self.fd = libc, fd
        self.overflowed = False

    def names(self, timeout: float) -> list[str]:
        """File names completed since the last call, waiting up to ``timeout`` seconds for the first."""
        ready, _, _ = select.select([self.fd], [], [], timeout)
        if not ready:
            return []
        try:
            data = os.read(self.fd, 1 << 16)
        except BlockingIOError:
            return []
        out, i = [], 0
        while i + _EVENT.size <= len(data):
            _, mask, _, length = _EVENT.unpack_from(data, i)
            name = data[i + _EVENT.size:i + _EVENT.size + length].rstrip(b"\0").decode(errors="surrogateescape")
            i += _EVENT.size + length
            if mask & IN_Q_OVERFLOW:
                self.overflowed = True  # events were lost: the source scans the folder
            elif name:
                out.append(name)
        return out

    def close(self) -> None:
        os.close(self.fd)


def open_watch(folder: str) -> Watch | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        fd = libc.inotify_init1(IN_NONBLOCK | IN_CLOEXEC)
        if fd < 0:
            return None
        if libc.inotify_add_watch(fd, os.fsencode(folder), IN_CLOSE_WRITE | IN_MOVED_TO) < 0:
            os.close(fd)
            return None
    except (OSError, AttributeError):
        return None
    return Watch(libc, fd)
