"""Static checks of the shipped units: systemd-analyze verify on every unit (with the
generator's drop-ins, as a host would have them), hardening exposure, and the generator."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from dispatch.core.config import Config, WatchMode
from dispatch.core.spool import INBOX_LEVEL_ENV, level_inboxes
from dispatch.receive import generator

TOP = Path(__file__).resolve().parent.parent
UNITS = sorted((TOP / "units").iterdir())
DISPATCH_BIN = Path(sys.executable).parent / "dispatch"


def _stage(tmp_path: Path, mode: WatchMode = WatchMode.SENSOR) -> Path:
    """The unit files with /usr/bin/dispatch pointing at this checkout's install, plus the
    generator's drop-ins for a two-peer node (by default in sensor mode: its drop-ins are
    the larger set, the sensor's settings and sandbox paths)."""
    out = tmp_path / "units"
    out.mkdir()
    for unit in UNITS:
        text = unit.read_text().replace("/usr/bin/dispatch", str(DISPATCH_BIN))
        (out / unit.name).write_text(text)
    cfg = Config(root=tmp_path / "share", node="gpubox", peers=("devbox", "laptop"))
    generator.write(out, cfg, mode)
    return out


def test_units_exist() -> None:
    names = {u.name for u in UNITS}
    assert names == {
        "dispatch-watch.path",
        "dispatch-watch.timer",
        "dispatch-watch.service",
        "dispatch-exec@.service",
        "dispatch.slice",
        "dispatch-heartbeat.timer",
        "dispatch-heartbeat.service",
        "dispatch-notify.service",
        "dispatch-sensor.service",
        "dispatch.target",
        "dispatch-signer.socket",
        "dispatch-signer.service",
    }


def test_one_target_wants_everything_a_node_runs() -> None:
    """`systemctl enable --now dispatch.target` is the one command that enables a node: the
    triggers, the heartbeat (nothing else starts its timer), the sensor and the notifier."""
    text = (TOP / "units" / "dispatch.target").read_text()
    wanted = {
        unit
        for line in text.splitlines()
        if line.startswith("Wants=")
        for unit in line.removeprefix("Wants=").split()
    }
    assert wanted == {
        "dispatch-watch.path",
        "dispatch-watch.timer",
        "dispatch-heartbeat.timer",
        "dispatch-sensor.service",
        "dispatch-notify.service",
        "dispatch-signer.socket",
    }
    assert all((TOP / "units" / unit).exists() for unit in wanted)
    assert "WantedBy=multi-user.target" in text
    assert not any(line.startswith("Requires=") for line in text.splitlines())


@pytest.mark.parametrize("mode", [WatchMode.SENSOR, WatchMode.TIMER, WatchMode.INOTIFY])
def test_systemd_analyze_verify_every_unit(tmp_path: Path, mode: WatchMode) -> None:
    assert shutil.which("systemd-analyze"), "systemd-analyze is needed (apt install systemd)"
    staged = _stage(tmp_path, mode)
    names = [
        u.name.replace("@.service", "@0b7c1f7e-5d1a-4c0e-9a2b-3f4e5d6c7b8a.service") for u in UNITS
    ]
    proc = subprocess.run(
        ["systemd-analyze", "verify", "--man=no", *names],
        cwd=staged,
        capture_output=True,
        text=True,
        check=False,
    )
    # verify also reports problems in the machine's own units; keep ours only.
    ours = [line for line in (proc.stdout + proc.stderr).splitlines() if "dispatch" in line]
    assert not ours, "\n".join(ours)


@pytest.mark.parametrize(
    ("unit", "ceiling"),
    [
        ("dispatch-watch.service", 2.5),
        ("dispatch-heartbeat.service", 2.5),
        ("dispatch-notify.service", 2.5),
        ("dispatch-sensor.service", 1.0),
        ("dispatch-signer.service", 1.5),
        ("dispatch-exec@.service", 3.5),
    ],
)
def test_hardening_exposure(tmp_path: Path, unit: str, ceiling: float) -> None:
    staged = _stage(tmp_path)
    proc = subprocess.run(
        ["systemd-analyze", "security", "--offline=true", unit],
        cwd=staged,
        capture_output=True,
        text=True,
        check=False,
    )
    found = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", proc.stdout)
    assert found, proc.stdout + proc.stderr
    assert float(found.group(1)) <= ceiling, proc.stdout


def test_every_loosening_is_commented() -> None:
    """Settings that weaken the sandbox must sit under a comment that says why."""
    loosen = re.compile(
        r"^(CapabilityBoundingSet=CAP|ProtectSystem=full|"
        r"RestrictAddressFamilies=.*AF_INET|ExecStopPost=-?\+)"
    )
    for unit in UNITS:
        lines = unit.read_text().splitlines()
        for i, line in enumerate(lines):
            if loosen.match(line):
                assert lines[i - 1].startswith("#"), f"{unit.name}: {line} lacks a why"


def test_generator_covers_every_lane_and_limit(tmp_path: Path) -> None:
    cfg = Config(
        root=Path("/srv/share"),
        node="gpubox",
        peers=("devbox", "laptop", "ci"),
        memory_max="2G",
        tasks_max=64,
        cpu_quota="150%",
        timeout_max_s=900,
        poll_sec=1.5,
    )
    files = generator.render(cfg, WatchMode.TIMER)
    assert not any("sensor" in name for name in files)
    path_unit = files["dispatch-watch.path.d/50-lanes.conf"]
    for peer in cfg.peers:
        for sub in ("inbox", "pending-ack", "processing"):
            assert f"PathChanged=/srv/share/{peer}-to-gpubox/{sub}\n" in path_unit
    assert "gpubox-to-" not in path_unit  # outgoing lanes are the peers' business
    limits = files["dispatch-exec@.service.d/50-limits.conf"]
    for line in (
        "MemoryMax=2G",
        "TasksMax=64",
        "CPUQuota=150%",
        "RuntimeMaxSec=960",
        "RequiresMountsFor=/srv/share",
        "ReadWritePaths=/srv/share",
    ):
        assert line in limits
    assert "OnUnitActiveSec=1.5s" in files["dispatch-watch.timer.d/50-poll.conf"]
    # Only the signer reads the private key: hidden from every other unit of the node.
    hidden = "InaccessiblePaths=-/etc/dispatch/keys/gpubox.ed25519\n"
    for unit in ("dispatch-watch", "dispatch-heartbeat"):
        assert hidden in files[f"{unit}.service.d/50-root.conf"]
    assert hidden in limits
    # ProtectSystem=strict: the heartbeat may write the metrics textfile's directory only.
    heartbeat = files["dispatch-heartbeat.service.d/50-root.conf"]
    assert "ReadWritePaths=/srv/share\n" in heartbeat
    assert "ReadWritePaths=-/var/lib/prometheus/node-exporter\n" in heartbeat
    cancel_watched = files["dispatch-watch.path.d/50-lanes.conf"]
    assert "PathChanged=/srv/share/devbox-to-gpubox/cancel\n" in cancel_watched


def test_generator_cli_writes_nothing_without_config(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DISPATCH_CONFIG", str(tmp_path / "absent.conf"))
    assert generator.main([str(tmp_path / "out")]) == 0
    assert not (tmp_path / "out").exists()


def test_a_broken_config_makes_the_watch_service_run_and_fail_visibly(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Not silence: the timer keeps starting dispatch-watch.service, whose `dispatch
    promote` fails on the config and says why (the unit shows failed)."""
    conf = tmp_path / "dispatch.conf"
    conf.write_text("DISPATCH_ROOT=/srv/share\nDISPATCH_NODE=gpubox\nDISPATCH_PEERS=devbox\n")
    conf.write_text(conf.read_text() + "DISPATCH_POLL_SEC=3s\n")
    monkeypatch.setenv("DISPATCH_CONFIG", str(conf))
    assert generator.main([str(tmp_path / "out")]) == 1
    dropin = (tmp_path / "out/dispatch-watch.timer.d/50-poll.conf").read_text()
    assert "OnUnitActiveSec=30s" in dropin
    assert (
        f"# {conf} is broken: invalid configuration: DISPATCH_POLL_SEC: must be a number" in dropin
    )
    # What the service then runs fails with the one-line reason, exit 2.
    proc = subprocess.run(
        [sys.executable, "-m", "dispatch", "promote"],
        env={**os.environ, "DISPATCH_CONFIG": str(conf)},
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 2 and "DISPATCH_POLL_SEC" in proc.stderr
    assert proc.stderr.count("\n") == 1


def test_generator_rejects_root_with_spaces() -> None:
    cfg = Config(root=Path("/srv/my share"), node="a", peers=("b",))
    with pytest.raises(Exception, match="whitespace"):
        generator.render(cfg)


MOUNTINFO = (
    "22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw\n"
    "37 22 0:45 / /mnt/ssh rw,relatime shared:30 - fuse.sshfs alice@files:/srv rw\n"
    "38 22 0:46 / /mnt/virt rw,relatime shared:31 - virtiofs share rw\n"
)
FSTAB = "# <file system> <mount point> <type> <options>\nfiles:/export /mnt/nfs nfs4 rw 0 0\n"


@pytest.mark.parametrize(
    ("root", "mode", "expected"),
    [
        ("/mnt/ssh/dispatch", WatchMode.AUTO, WatchMode.SENSOR),  # mounted sshfs
        ("/mnt/nfs/dispatch", WatchMode.AUTO, WatchMode.SENSOR),  # at boot, before the mount
        ("/srv/dispatch", WatchMode.AUTO, WatchMode.INOTIFY),  # local ext4: inotify sees all
        ("/mnt/virt/dispatch", WatchMode.AUTO, WatchMode.TIMER),  # a type not known local
        ("/srv/dispatch", WatchMode.TIMER, WatchMode.TIMER),
        ("/srv/dispatch", WatchMode.SENSOR, WatchMode.SENSOR),  # forced either way
        ("/mnt/ssh/dispatch", WatchMode.TIMER, WatchMode.TIMER),
    ],
)
def test_watch_mode_follows_the_roots_filesystem(
    root: str, mode: WatchMode, expected: WatchMode
) -> None:
    cfg = Config(root=Path(root), node="gpubox", peers=("devbox",), watch_mode=mode)
    assert generator.watch_mode(cfg, MOUNTINFO, FSTAB) is expected


def test_generator_in_sensor_mode(tmp_path: Path) -> None:
    cfg = Config(
        root=Path("/srv/share"),
        node="gpubox",
        peers=("devbox", "laptop"),
        sensor_ms=400,
        poll_sec=2,
        state_dir=Path("/var/lib/dispatch"),
    )
    files = generator.render(cfg, WatchMode.SENSOR)
    sensor = files["dispatch-sensor.service.d/50-sensor.conf"]
    for line in (
        "RequiresMountsFor=/srv/share",
        "Environment=DISPATCH_SENSOR_ROOT=/srv/share",
        "Environment=DISPATCH_SENSOR_NODE=gpubox",
        "Environment=DISPATCH_SENSOR_PEERS=devbox,laptop",
        "Environment=DISPATCH_SENSOR_MS=400",
        "Environment=DISPATCH_SENSOR_IDLE_MS=1000",
        "ReadWritePaths=/srv/share/heartbeats",
        "InaccessiblePaths=-/etc/dispatch/keys",
    ):
        assert line + "\n" in sensor
    # Not the whole share: the heartbeat is all it writes there.
    assert "ReadWritePaths=/srv/share\n" not in sensor
    # Its passes end with a settled look they leave for the sensor; in timer mode they don't.
    looked = "Environment=DISPATCH_SENSOR_LOOKED=/run/dispatch/looked\n"
    assert looked in files["dispatch-watch.service.d/50-sensor.conf"]
    assert "dispatch-watch.service.d/50-sensor.conf" not in generator.render(cfg, WatchMode.TIMER)
    sweep = f"OnUnitActiveSec={generator.SENSOR_SWEEP_S}s\n"
    assert sweep in files["dispatch-watch.timer.d/50-poll.conf"]
    # The unit's 15 s is reset, not added to.
    beat_timer = files["dispatch-heartbeat.timer.d/50-sensor.conf"]
    assert "OnUnitActiveSec=\nOnBootSec=2s\n" + sweep in beat_timer


def test_a_broken_config_still_lets_the_heartbeat_say_so(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The heartbeat unit's sandbox (ProtectSystem=strict) needs the generator's drop-in to
    write the share: with a broken config it still gets `<root>/heartbeats`, even when the
    file does not parse, so peers read why the node takes no task."""
    conf = tmp_path / "dispatch.conf"
    monkeypatch.setenv("DISPATCH_CONFIG", str(conf))
    for broken in ("DISPATCH_POLL_SEC=3s\n", "no equals sign on this line\n"):
        conf.write_text("DISPATCH_ROOT=/srv/share\nDISPATCH_NODE=gpubox\n" + broken)
        out = tmp_path / f"out{len(broken)}"
        assert generator.main([str(out)]) == 1
        dropin = (out / "dispatch-heartbeat.service.d/50-root.conf").read_text()
        assert "RequiresMountsFor=/srv/share\n" in dropin
        assert "ReadWritePaths=-/srv/share/heartbeats\n" in dropin
        # Nothing else of the share: the lanes stay read-only to it.
        assert "ReadWritePaths=/srv/share\n" not in dropin


def test_generator_in_inotify_mode() -> None:
    """A local disk root: the path unit sees every write, so the timer only sweeps, and no
    sensor runs."""
    cfg = Config(root=Path("/srv/share"), node="gpubox", peers=("devbox",), poll_sec=2)
    files = generator.render(cfg, WatchMode.INOTIFY)
    assert (
        f"OnUnitActiveSec={generator.INOTIFY_SWEEP_S}s\n"
        in files["dispatch-watch.timer.d/50-poll.conf"]
    )
    assert "dispatch-sensor.service.d/50-sensor.conf" not in files
    assert "dispatch-watch.service.d/50-sensor.conf" not in files
    path_unit = files["dispatch-watch.path.d/50-lanes.conf"]
    assert "PathChanged=/srv/share/devbox-to-gpubox/inbox\n" in path_unit
    # Level-triggered on the inboxes as well, and the promoter is told so.
    assert "DirectoryNotEmpty=/srv/share/devbox-to-gpubox/inbox\n" in path_unit
    assert path_unit.count("DirectoryNotEmpty=") == 1  # not processing/: it holds what runs
    # The promoter is told which inboxes those are (as of this daemon-reload).
    [level] = [
        line.split("=", 2)[2]
        for line in files["dispatch-watch.service.d/50-inotify.conf"].splitlines()
        if line.startswith(f"Environment={INBOX_LEVEL_ENV}=")
    ]
    assert level_inboxes(level) == [Path("/srv/share/devbox-to-gpubox/inbox")]
    for other in (WatchMode.SENSOR, WatchMode.TIMER):
        # A network filesystem: no readdir by PID 1 on a share that may hang.
        rendered = generator.render(cfg, other)
        assert "DirectoryNotEmpty=" not in rendered["dispatch-watch.path.d/50-lanes.conf"]
        assert not any(INBOX_LEVEL_ENV in text for text in rendered.values())
    timer = generator.render(cfg, WatchMode.TIMER)
    assert "OnUnitActiveSec=2s\n" in timer["dispatch-watch.timer.d/50-poll.conf"]
