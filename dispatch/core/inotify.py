"""The only module that touches pyinotify: wake up early on local file events.

inotify sees no write made by another host (NFS, SMB, FUSE), so callers always rescan on a
timer as well; this only makes local events fast. Without pyinotify it degrades to sleep."""

from __future__ import annotations

import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any


class DirWatcher:
    def __init__(self, dirs: Iterable[Path]) -> None:
        self._notifier: Any = None
        self._wm: Any = None
        try:
            import pyinotify
        except ImportError:
            return
        mask = (
            pyinotify.IN_CREATE
            | pyinotify.IN_MOVED_TO
            | pyinotify.IN_CLOSE_WRITE
            | pyinotify.IN_DELETE
            | pyinotify.IN_MOVED_FROM
            | pyinotify.IN_ATTRIB
        )
        self._wm = pyinotify.WatchManager()
        for directory in dirs:
            if directory.is_dir():
                self._wm.add_watch(str(directory), mask, quiet=True)
        self._notifier = pyinotify.Notifier(self._wm, default_proc_fun=_ignore, timeout=0)

    def wait(self, timeout: float) -> bool:
        """Block until an event or `timeout` seconds; True if something happened."""
        if self._notifier is None:
            time.sleep(max(0.0, timeout))
            return False
        if self._notifier.check_events(timeout=max(0, int(timeout * 1000))):
            self._notifier.read_events()
            self._notifier.process_events()
            return True
        return False

    def close(self) -> None:
        if self._notifier is not None:
            self._notifier.stop()
            self._notifier = None

    def __enter__(self) -> DirWatcher:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _ignore(_event: object) -> None:
    return None
