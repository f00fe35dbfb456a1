"""The two sites: one systemd host with a local share, and two hosts sharing a root over
sshfs from a file-server namespace (tests/e2e/cluster.py). Each is a context manager that
tears down everything it made (namespaces, mounts, processes), whatever happens."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

from bench.common import log
from bench.systems import (
    MNT_IN,
    RECEIVER,
    SENDER,
    DispatchSystem,
    OriginalSystem,
    Site,
    agent_in,
    write_agents,
)
from dispatch.core.config import Config
from tests.e2e.cluster import Cluster, SshKeys, missing_e2e_prerequisites
from tests.integration.dispatch_host import SENDER_CONF, DispatchHost
from tests.integration.sdhost import SystemdHost, missing_prerequisites


def settings(poll_sec: int) -> dict[str, str]:
    # BENCH_WATCH_MODE=timer measures the polling fallback, on sshfs and locally (the
    # default, auto, runs the sensor on sshfs and inotify alone on the local site's disk).
    return {
        "DISPATCH_POLL_SEC": str(poll_sec),
        "DISPATCH_MAX_PARALLEL": "2",
        "DISPATCH_AGENT_BIN": agent_in("fake-agent"),
        "DISPATCH_WATCH_MODE": os.environ.get("BENCH_WATCH_MODE", "") or "auto",
        # The shipped stay after a busy pass, not the 3 s the test harnesses set so that
        # their waits for a quiet node are short: with 3 s, a latency sample sent as a stay
        # ended could land after the leaving promoter's last look and before systemd
        # watched again, and wait for the sweep (19.7 s in session 9's first full run).
        "DISPATCH_PROMOTE_LINGER_S": str(Config.promote_linger_s),
    }


@contextlib.contextmanager
def local_site(workdir: Path, poll_sec: int) -> Iterator[tuple[DispatchSystem, OriginalSystem]]:
    """Host `gpubox`: dispatch node gpubox receiving from devbox (whose sender config lives in
    the same host, as tests/integration does), the share a local directory at /mnt/dispatch.
    The original's root is /mnt/dispatch/share/orig on the same disk."""
    problems = missing_prerequisites()
    if problems:
        raise SystemExit("bench: cannot boot systemd hosts: " + "; ".join(problems))
    base = workdir / "local"
    mnt = base / "mnt"
    mnt.mkdir(mode=0o755, parents=True)
    host = SystemdHost(
        RECEIVER,
        base / "sdhost",
        binds={
            "/etc/dispatch": base / "etc-dispatch",
            "/var/lib/dispatch": base / "var-lib-dispatch",
            MNT_IN: mnt,
        },
    )
    log("local: booting systemd host gpubox")
    try:
        host.start()
        write_agents(mnt)
        DispatchHost(host).setup(timer=True, settings=settings(poll_sec))
        site = Site(
            "local",
            host,
            host,
            mnt / "share",
            mnt,
            mnt,
            base / "etc-dispatch" / "dispatch.conf",
            SENDER_CONF,
        )
        dispatch, original = DispatchSystem(site), OriginalSystem(site)
        dispatch.install_slices()
        dispatch.stop()
        original.setup()
        yield dispatch, original
    finally:
        log("local: powering off")
        host.poweroff()


@contextlib.contextmanager
def sshfs_site(workdir: Path, poll_sec: int) -> Iterator[tuple[DispatchSystem, OriginalSystem]]:
    """Hosts devbox and gpubox, each with its own systemd, network namespace and sshfs mount
    of one export at /mnt/dispatch/share; both are dispatch nodes (path, timer, heartbeat)."""
    problems = missing_e2e_prerequisites()
    if problems:
        raise SystemExit("bench: cannot build the sshfs cluster: " + "; ".join(problems))
    keys = SshKeys(workdir / "ssh").generate()
    cluster = Cluster(
        workdir / "cluster",
        keys,
        [SENDER, RECEIVER],
        {name: settings(poll_sec) for name in (SENDER, RECEIVER)},
    )
    log("sshfs: booting file server, devbox and gpubox")
    try:
        cluster.start()
        devbox, gpubox = cluster[SENDER], cluster[RECEIVER]
        for node in (devbox, gpubox):
            write_agents(node.dir / "mnt")
        site = Site(
            "sshfs",
            devbox.host,
            gpubox.host,
            cluster.server.export,
            devbox.dir / "mnt",
            gpubox.dir / "mnt",
            gpubox.dir / "etc-dispatch" / "dispatch.conf",
            None,
        )
        dispatch, original = DispatchSystem(site), OriginalSystem(site)
        dispatch.install_slices()
        original.setup()
        yield dispatch, original
    finally:
        log("sshfs: powering off hosts and file server")
        cluster.stop()
