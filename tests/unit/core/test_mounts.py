"""Which file system holds the root, from /proc/self/mountinfo: the longest mount point that
prefixes the path, its type, and its options (NFS attribute caching)."""

from __future__ import annotations

from pathlib import Path

from dispatch.core.mounts import mount_of
from dispatch.ops.doctor import nfs_dir_cache_s

MOUNTINFO = """\
22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw,errors=remount-ro
35 22 0:31 / /mnt/share rw,relatime shared:20 - nfs4 files:/export/dispatch \
rw,vers=4.2,rsize=1048576,wsize=1048576,namlen=255,acregmin=1,acregmax=1,acdirmin=1,\
acdirmax=1,hard,proto=tcp,timeo=600,retrans=2,sec=sys,clientaddr=10.0.0.2,lookupcache=pos,\
local_lock=none,addr=10.0.0.1
36 22 0:32 / /mnt/slow rw,relatime shared:21 - nfs files:/export rw,vers=3,rsize=65536,\
wsize=65536,namlen=255,hard,proto=tcp,timeo=600,retrans=2,sec=sys,mountaddr=10.0.0.1,\
mountvers=3,mountport=20048,mountproto=udp,local_lock=none,addr=10.0.0.1
37 22 0:45 / /mnt/ssh rw,nosuid,nodev,relatime shared:30 - fuse.sshfs alice@files:/srv \
rw,user_id=0,group_id=0
38 22 0:46 / /mnt/win rw,relatime shared:31 - cifs //files/share rw,vers=3.1.1,cache=strict
39 22 0:47 / /mnt/usb rw,relatime shared:32 - fuseblk /dev/sdb1 rw,user_id=0,group_id=0
40 22 0:48 / /mnt/my\\040share rw,relatime shared:33 - tmpfs tmpfs rw,size=1024k
41 22 0:49 / /mnt/noac rw,relatime shared:34 - nfs4 files:/x rw,vers=4.2,sync,noac,\
acregmin=0,acregmax=0,acdirmin=0,acdirmax=0,hard
42 35 0:50 / /mnt/share/inner rw,relatime shared:35 - tmpfs tmpfs rw
this line is not mountinfo at all
"""


def test_nfs_root_with_its_cache_options() -> None:
    mount = mount_of(Path("/mnt/share/dispatch/devbox-to-gpubox"), MOUNTINFO)
    assert mount is not None
    assert (mount.mount_point, mount.fstype, mount.source) == (
        "/mnt/share",
        "nfs4",
        "files:/export/dispatch",
    )
    assert mount.remote
    # The kernel shows actimeo=1 as the four ac* values, and lookupcache=positive as pos.
    assert mount.option("acdirmax") == "1" and mount.option("lookupcache") == "pos"
    assert mount.option("actimeo") is None
    assert mount.option("hard") == "" and mount.option("relatime") == ""  # flags
    assert nfs_dir_cache_s(mount) == (1, "acdirmax=1")


def test_nfs_defaults_are_not_listed() -> None:
    mount = mount_of(Path("/mnt/slow/dispatch"), MOUNTINFO)
    assert mount is not None and mount.fstype == "nfs" and mount.remote
    assert mount.option("lookupcache") is None
    assert nfs_dir_cache_s(mount) == (60, "the default acdirmax")
    noac = mount_of(Path("/mnt/noac"), MOUNTINFO)
    assert noac is not None and nfs_dir_cache_s(noac) == (0, "noac")


def test_fuse_and_smb_are_remote_fuseblk_and_local_disks_are_not() -> None:
    for path, fstype, remote in (
        ("/mnt/ssh/dispatch", "fuse.sshfs", True),
        ("/mnt/win/x", "cifs", True),
        ("/mnt/usb/x", "fuseblk", False),
        ("/srv/dispatch", "ext4", False),
    ):
        mount = mount_of(Path(path), MOUNTINFO)
        assert mount is not None and mount.fstype == fstype, (path, mount)
        assert mount.remote is remote, path


def test_longest_prefix_and_path_boundaries() -> None:
    inner = mount_of(Path("/mnt/share/inner/x"), MOUNTINFO)
    assert inner is not None and inner.mount_point == "/mnt/share/inner"
    # /mnt/shared is not under /mnt/share.
    other = mount_of(Path("/mnt/shared/x"), MOUNTINFO)
    assert other is not None and other.mount_point == "/"
    exact = mount_of(Path("/mnt/share"), MOUNTINFO)
    assert exact is not None and exact.fstype == "nfs4"


def test_escaped_mount_points() -> None:
    mount = mount_of(Path("/mnt/my share/dispatch"), MOUNTINFO)
    assert mount is not None and mount.mount_point == "/mnt/my share"
    assert mount.fstype == "tmpfs" and not mount.remote


def test_a_later_mount_on_the_same_point_hides_the_earlier() -> None:
    stacked = MOUNTINFO + "50 35 0:60 / /mnt/share rw - fuse.sshfs bob@b:/y rw\n"
    mount = mount_of(Path("/mnt/share/x"), stacked)
    assert mount is not None and mount.fstype == "fuse.sshfs"


def test_the_real_mountinfo(tmp_path: Path) -> None:
    mount = mount_of(tmp_path)
    assert mount is not None
    assert str(tmp_path.resolve()).startswith(mount.mount_point)
    assert mount.fstype
