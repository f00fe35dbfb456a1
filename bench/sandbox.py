"""What the exec unit's sandbox costs systemd before the executor runs, directive by directive.

    .venv/bin/python -m bench.sandbox [-n 15]      # about 1 min

Boots a systemd host (tests/integration/sdhost.py) and starts copies of the shipped
dispatch-exec@.service's [Service] section, each with one group of directives removed, as
`Type=exec` units whose command is /bin/true. For each start, systemd's own timestamps
give the set-up time in the forked child: from the fork (ExecMainStartTimestampMonotonic)
to the successful execve (ActiveEnterTimestampMonotonic, which Type=exec sets then). That
is the hop bench.hops calls "dispatch-exec@ running". Prints the median of each variant
and its difference from the full set."""

from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path

from bench.common import log
from tests.integration.sdhost import SystemdHost

TOP = Path(__file__).resolve().parents[1]
# Directives that shape only what happens after execve (limits, kill and stop handling,
# logging, the unit's own command lines) are left out: they cost nothing at set-up.
GROUPS: dict[str, tuple[str, ...]] = {
    "PrivateTmp=": ("PrivateTmp",),
    "PrivateDevices=, DevicePolicy=": ("PrivateDevices", "DevicePolicy"),
    "ProtectSystem=full": ("ProtectSystem",),
    "ProtectKernel*=, ProtectControlGroups=": (
        "ProtectKernelTunables",
        "ProtectKernelModules",
        "ProtectKernelLogs",
        "ProtectControlGroups",
    ),
    "ProtectClock=, ProtectHostname=": ("ProtectClock", "ProtectHostname"),
    "SystemCallFilter= (3 lines), SystemCallArchitectures=": (
        "SystemCallFilter",
        "SystemCallArchitectures",
        "SystemCallErrorNumber",
    ),
    "RestrictAddressFamilies=, RestrictNamespaces=, Restrict*=": (
        "RestrictAddressFamilies",
        "RestrictNamespaces",
        "RestrictRealtime",
        "RestrictSUIDSGID",
        "LockPersonality",
    ),
    "CapabilityBoundingSet=, NoNewPrivileges=": (
        "CapabilityBoundingSet",
        "AmbientCapabilities",
        "NoNewPrivileges",
    ),
    "StateDirectory=": ("StateDirectory", "StateDirectoryMode"),
}
# Any of these makes systemd build a mount namespace for the unit (exec-util, namespace.c).
MOUNT_NS = (
    "PrivateTmp",
    "PrivateDevices",
    "ProtectSystem",
    "ProtectKernelTunables",
    "ProtectKernelModules",
    "ProtectKernelLogs",
    "ProtectControlGroups",
    "ProtectClock",
    "ProtectHostname",
    "ReadWritePaths",
)
AFTER_EXECVE = (
    "Type",
    "Slice",
    "ExecStart",
    "ExecStopPost",
    "EnvironmentFile",
    "Environment",
    "LogExtraFields",
    "KillMode",
    "TimeoutStopSec",
    "SuccessExitStatus",
    "RemoveIPC",
    "KeyringMode",
)


def shipped_sandbox() -> list[str]:
    """The [Service] lines of the shipped exec unit that act before execve."""
    text = (TOP / "units" / "dispatch-exec@.service").read_text()
    service = text.split("[Service]", 1)[1]
    lines = []
    for line in service.splitlines():
        key = line.split("=", 1)[0].strip()
        if line and not line.startswith("#") and "=" in line and key not in AFTER_EXECVE:
            lines.append(line)
    return lines


def unit_text(lines: list[str]) -> str:
    return "[Service]\nType=exec\nRemainAfterExit=yes\nExecStart=/bin/true\n" + "\n".join(lines)


def setup_ms(host: SystemdHost, unit: str) -> float:
    """One start of `unit`: fork → execve in milliseconds, by systemd's own clock."""
    host.systemctl("start", unit)
    fork = int(host.unit_property(unit, "ExecMainStartTimestampMonotonic"))
    active = int(host.unit_property(unit, "ActiveEnterTimestampMonotonic"))
    host.systemctl("stop", unit)
    return (active - fork) / 1000


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.sandbox")
    parser.add_argument("-n", type=int, default=15, help="starts per variant (default 15)")
    args = parser.parse_args()
    full = shipped_sandbox()
    variants = {
        "the shipped set": full,
        "no sandbox at all": [],
        "PrivateTmp= alone (a mount namespace, nothing else)": ["PrivateTmp=yes"],
        "all but what needs a mount namespace": [
            line for line in full if line.split("=", 1)[0].strip() not in MOUNT_NS
        ],
    }
    for label, keys in GROUPS.items():
        variants[f"without {label}"] = [
            line for line in full if line.split("=", 1)[0].strip() not in keys
        ]
    with tempfile.TemporaryDirectory(prefix="dispatch-bench-sandbox-") as work:
        host = SystemdHost("sandbox", Path(work) / "host", binds={})
        host.start()
        try:
            units = {}
            for i, (label, lines) in enumerate(variants.items()):
                units[label] = host.install_unit(unit_text(lines), f"probe{i}.service", False)
            host.daemon_reload()
            samples: dict[str, list[float]] = {label: [] for label in units}
            # Round-robin, after a warm-up start of each: drift in the machine's load then
            # spreads over every variant instead of landing on whichever ran first.
            for round_ in range(args.n + 1):
                for label, unit in units.items():
                    value = setup_ms(host, unit)
                    if round_:
                        samples[label].append(value)
            results = {label: statistics.median(values) for label, values in samples.items()}
            for label, value in results.items():
                log(f"{label}: {value:.1f} ms")
        finally:
            host.poweroff()
    base = results["the shipped set"]
    print(f"exec unit set-up, fork → execve, median of {args.n} starts per variant\n")
    print("| variant | set-up | vs the shipped set |\n|---|---|---|")
    for label, value in results.items():
        print(f"| {label} | {value:.1f} ms | {value - base:+.1f} ms |")


if __name__ == "__main__":
    main()
