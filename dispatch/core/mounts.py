"""What filesystem a path lives on, and how it is mounted (from /proc/self/mountinfo)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

# inotify sees no write another host makes on these (systemd.path(5), inotify(7)).
REMOTE_TYPES = (
    "nfs",
    "nfs4",
    "cifs",
    "smb3",
    "smbfs",
    "9p",
    "ceph",
    "glusterfs",
    "lustre",
    "afs",
    "gpfs",
    "beegfs",
)


# Filesystems on this host's own block devices or memory: every write to them, an NFS or
# SMB server's on behalf of its clients included, goes through this kernel's VFS, where
# inotify sees it. Anything not listed (overlay, virtiofs, vboxsf, an unknown type) is not
# assumed to be seen.
LOCAL_DISK_TYPES = (
    "ext2",
    "ext3",
    "ext4",
    "xfs",
    "btrfs",
    "zfs",
    "f2fs",
    "jfs",
    "bcachefs",
    "tmpfs",
)


@dataclass(frozen=True)
class Mount:
    mount_point: str
    fstype: str
    source: str
    options: tuple[str, ...]

    @property
    def remote(self) -> bool:
        # Any FUSE file system (sshfs is fuse.sshfs) may be fed by another host, except
        # fuseblk, a local block device (ntfs-3g).
        return self.fstype in REMOTE_TYPES or (
            self.fstype.startswith("fuse") and self.fstype != "fuseblk"
        )

    @property
    def local_disk(self) -> bool:
        return self.fstype in LOCAL_DISK_TYPES

    def option(self, name: str) -> str | None:
        for opt in self.options:
            key, _, value = opt.partition("=")
            if key == name:
                return value
        return None


def _unescape(field: str) -> str:
    # mountinfo escapes space, tab, newline and backslash as octal.
    return field.encode().decode("unicode_escape") if "\\" in field else field


def _inside(target: str, point: str) -> bool:
    return target == point or target.startswith(point.rstrip("/") + "/")


def mount_of(path: Path, mountinfo: str | None = None, *, resolve: bool = True) -> Mount | None:
    """The mount holding `path`: the longest mount point that prefixes its real path. With
    `resolve=False` the path is taken as written and nothing is stat'ed (a generator must
    not block on a hung network mount)."""
    if mountinfo is None:
        try:
            mountinfo = Path("/proc/self/mountinfo").read_text()
        except OSError:
            return None
    target = os.path.realpath(path) if resolve else os.path.normpath(path)
    best: Mount | None = None
    for line in mountinfo.splitlines():
        left, sep, right = line.partition(" - ")
        if not sep:
            continue
        fields = left.split()
        rest = right.split()
        if len(fields) < 6 or len(rest) < 3:
            continue
        point = _unescape(fields[4])
        if _inside(target, point) and (best is None or len(point) >= len(best.mount_point)):
            options = tuple(fields[5].split(",")) + tuple(rest[2].split(","))
            best = Mount(point, rest[0], _unescape(rest[1]), options)
    return best


def fstab_mount_of(path: Path, fstab: str | None = None) -> Mount | None:
    """The /etc/fstab entry that will hold `path` once mounted (the longest mount point
    prefixing it): at boot, generators run before network filesystems are mounted."""
    if fstab is None:
        try:
            fstab = Path("/etc/fstab").read_text()
        except OSError:
            return None
    target = os.path.normpath(path)
    best: Mount | None = None
    for line in fstab.splitlines():
        fields = line.split("#", 1)[0].split()
        if len(fields) < 3:
            continue
        point = _unescape(fields[1])
        if _inside(target, point) and (best is None or len(point) >= len(best.mount_point)):
            options = tuple(fields[3].split(",")) if len(fields) > 3 else ()
            best = Mount(point, fields[2], _unescape(fields[0]), options)
    return best
