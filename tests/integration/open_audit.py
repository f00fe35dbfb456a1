"""Who opens a file: fanotify(7) reports every open of PATH with the opener's pid, which this
prints as one line `<pid> <command line>` to OUT until it is terminated (SIGTERM).

    python3 open_audit.py PATH OUT

Run inside a test host as root (fanotify needs CAP_SYS_ADMIN). It writes `ready` to OUT
once the mark is set, so the test starts what it audits only after that."""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import struct
import sys

FAN_CLASS_NOTIF = 0x0
FAN_CLOEXEC = 0x1
FAN_MARK_ADD = 0x1
FAN_OPEN = 0x20
AT_FDCWD = -100
# struct fanotify_event_metadata: event_len, vers, reserved, metadata_len, mask, fd, pid
EVENT = struct.Struct("=IBBHQii")


def main(path: str, out: str) -> int:
    libc = ctypes.CDLL(None, use_errno=True)
    libc.fanotify_mark.argtypes = [
        ctypes.c_int,
        ctypes.c_uint,
        ctypes.c_uint64,
        ctypes.c_int,
        ctypes.c_char_p,
    ]
    fd = libc.fanotify_init(FAN_CLASS_NOTIF | FAN_CLOEXEC, os.O_RDONLY)
    if fd < 0:
        raise OSError(ctypes.get_errno(), "fanotify_init")
    if libc.fanotify_mark(fd, FAN_MARK_ADD, FAN_OPEN, AT_FDCWD, path.encode()) < 0:
        raise OSError(ctypes.get_errno(), "fanotify_mark")
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    with open(out, "w", buffering=1) as report:
        report.write("ready\n")
        while True:
            data = os.read(fd, 4096)
            offset = 0
            while offset + EVENT.size <= len(data):
                length, _, _, _, _, event_fd, pid = EVENT.unpack_from(data, offset)
                opened = "?"
                if event_fd >= 0:
                    with contextlib.suppress(OSError):
                        opened = os.readlink(f"/proc/self/fd/{event_fd}")
                    os.close(event_fd)
                try:
                    with open(f"/proc/{pid}/cmdline", "rb") as cmdline:
                        command = cmdline.read().replace(b"\0", b" ").decode(errors="replace")
                except OSError:
                    command = "?"
                report.write(f"{pid} {command.strip()} [{opened}]\n")
                offset += length


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1], sys.argv[2]))
