"""Files the running gateway re-reads when they change: tenants, limits, JWT keys.

One mechanism for all of them. A `WatchedFile` knows its file's stamp (mtime,
size, inode: `tenants save` replaces the file, so the inode changes even when a
coarse mtime and the size do not) and re-reads it only when the stamp moved. A
version that does not load is logged once and the value in force stays, so a
typo never locks every tenant out or lifts every limit at once. The
`FileWatcher` checks each file at its own interval from one background task.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Generic, TypeVar

T = TypeVar("T")

Stamp = tuple[float, int, int] | None
"""(mtime, size, inode) of a file; None when it does not exist."""
_NEVER_READ: object = object()


def file_stamp(path: Path) -> Stamp:
    """The file's stamp, None when it cannot be looked at (missing)."""
    try:
        stat = path.stat()
    except OSError:
        return None
    return (stat.st_mtime, stat.st_size, stat.st_ino)


class WatchedFile(Generic[T]):
    """The value loaded from one file, re-read when the file changes.

    `load(path)` returns the new value or raises ValueError with a message naming
    what is wrong (it decides what a missing file means). With `initial`, a file
    that does not load at start-up is logged and `initial` is in force; without,
    the error propagates (the gateway does not start).
    """

    def __init__(
        self,
        path: Path,
        load: Callable[[Path], T],
        *,
        what: str,
        logger: logging.Logger,
        every: float = 2.0,
        initial: Callable[[], T] | None = None,
    ) -> None:
        self.path = path
        self.every = every
        self._load = load
        self._what = what
        self._logger = logger
        self._stamp: object = _NEVER_READ
        self.next_check = 0.0
        if initial is None:
            self._stamp = file_stamp(path)
            self.value = load(path)
        else:
            self.value = initial()
            self.reload()

    def reload(self) -> bool:
        """Re-read the file if its stamp changed; True when a new value took effect."""
        stamp = file_stamp(self.path)
        if stamp == self._stamp:
            return False
        self._stamp = stamp  # a broken version is reported once, not at every check
        try:
            value = self._load(self.path)
        except ValueError as exc:
            self._logger.error("%s rejected, keeping the previous one: %s", self._what, exc)
            return False
        self.value = value
        return True


class FileWatcher:
    """Checks every watched file when its interval is due, from one task."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self.files: list[WatchedFile[object]] = []

    def watch(self, file: WatchedFile[T]) -> WatchedFile[T]:
        """Check `file` from now on; returns it."""
        file.next_check = self._clock() + file.every
        self.files.append(file)  # type: ignore[arg-type]
        return file

    def poll(self) -> None:
        """Re-read the files whose check is due and which changed."""
        now = self._clock()
        for file in self.files:
            if now >= file.next_check:
                file.next_check = now + file.every
                try:
                    file.reload()
                except Exception:
                    # A loader bug must not end the task that reloads every file.
                    logging.getLogger(__name__).exception("reloading %s failed", file.path)

    async def run(self) -> None:
        """Poll until cancelled."""
        if not self.files:
            return
        step = min(file.every for file in self.files)
        while True:
            await asyncio.sleep(step)
            self.poll()
