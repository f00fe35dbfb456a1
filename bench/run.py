"""Run the bench: dispatch (under a real systemd in PID namespaces) beside the original
project, the same figures for both, side by side with their ratio.

    .venv/bin/python -m bench.run --mode quick            # ~7 min, report on stdout
    .venv/bin/python -m bench.run --mode full --write     # ~25 min, bench/RESULTS.md

Run as root from the repository's top directory. See bench/README.md."""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any

from bench import idle as idle_mod
from bench.common import compile_checkout, fmt_ratio, fmt_seconds, log, machine, ratio
from bench.figures import drain, latency, throughput
from bench.sites import local_site, sshfs_site
from bench.systems import original_missing
from dispatch.core.config import Config
from dispatch.receive.sensor import ACTIVE_S

TOP = Path(__file__).resolve().parent.parent
FIGURES = ("latency-local", "throughput", "drain", "latency-sshfs", "idle")
# Longer than dispatch-sensor's fast period after a change (sensor.ACTIVE_S) and than the
# promoter's stay after a busy pass (DISPATCH_PROMOTE_LINGER_S): what an idle node costs.
QUIET_S = max(ACTIVE_S, Config.promote_linger_s) + 5


@dataclass(frozen=True)
class Mode:
    name: str
    latency_local: int  # sequential samples per system
    latency_sshfs: int
    latency_quiet: int  # samples of the first task after a quiet spell (each site)
    burst: int  # tasks per throughput burst
    drains: tuple[int, int]  # the small and the large backlog
    original_drain_window: tuple[float | None, float | None]  # None: drain fully
    idle_s: float


MODES = {
    # Checks that the bench itself works (a few minutes); its figures mean little.
    "smoke": Mode("smoke", 3, 3, 1, 6, (5, 20), (None, 15.0), 10.0),
    "quick": Mode("quick", 6, 5, 2, 16, (20, 200), (None, 30.0), 20.0),
    "full": Mode("full", 30, 20, 5, 40, (100, 1000), (None, 120.0), 60.0),
}


def run(
    mode: Mode, figures: set[str], poll_sec: int, seed: int, workdir: Path, which: set[str]
) -> dict[str, Any]:
    out: dict[str, Any] = {
        "mode": mode.name,
        "poll_sec": poll_sec,
        "seed": seed,
        "machine": machine(),
        "figures": {},
    }
    figs: dict[str, Any] = out["figures"]
    if figures & {"latency-local", "throughput", "drain"}:
        with local_site(workdir, poll_sec) as both:
            systems = [s for s in both if s.name in which]
            if "latency-local" in figures:
                log("figure: send→agent-start / send→result latency, local share")
                figs["latency_local"] = {
                    s.name: latency(s, mode.latency_local, poll_sec, seed).summary()
                    for s in systems
                }
                if "dispatch" in which:
                    log("figure: the first task after a quiet spell, local share (dispatch)")
                    figs["latency_local_quiet"] = {
                        "dispatch": latency(
                            both[0], mode.latency_quiet, poll_sec, seed, quiet_s=QUIET_S
                        ).summary()
                    }
            if "throughput" in figures:
                for cap in (2, 8):
                    log(f"figure: throughput, no-op agent, cap {cap}")
                    figs[f"throughput_cap{cap}"] = {
                        s.name: throughput(s, mode.burst, cap, poll_sec).summary() for s in systems
                    }
            if "drain" in figures:
                for size, window in zip(mode.drains, mode.original_drain_window, strict=True):
                    log(f"figure: drain {size} queued tasks (cap 2, no-op agent)")
                    figs[f"drain_{size}"] = {
                        s.name: drain(
                            s, size, poll_sec, window=window if s.name == "original" else None
                        ).summary()
                        for s in systems
                    }
    if figures & {"latency-sshfs", "idle"}:
        with sshfs_site(workdir, poll_sec) as (dispatch, original):
            if "latency-sshfs" in figures:
                log("figure: latency over sshfs (two hosts)")
                figs["latency_sshfs"] = {}
                if "dispatch" in which:
                    dispatch.start_everywhere()
                    figs["latency_sshfs"]["dispatch"] = latency(
                        dispatch, mode.latency_sshfs, poll_sec, seed
                    ).summary()
                    log("figure: the first task after a quiet spell, over sshfs (dispatch)")
                    figs["latency_sshfs_quiet"] = {
                        "dispatch": latency(
                            dispatch,
                            mode.latency_quiet,
                            poll_sec,
                            seed,
                            quiet_s=QUIET_S,
                        ).summary()
                    }
                dispatch.stop_everywhere()
                if "original" in which:
                    figs["latency_sshfs"]["original"] = latency(
                        original, mode.latency_sshfs, poll_sec, seed
                    ).summary()
            if "idle" in figures:
                log(f"figure: idle for {mode.idle_s:g}s on both hosts")
                hosts = dispatch.site.hosts()
                figs["idle"] = {}
                original.stop()
                if "dispatch" in which:
                    dispatch.start_everywhere()
                    # Past the start-up passes, and past the sensor's fast period after them:
                    # what a node costs while it idles for hours.
                    time.sleep(poll_sec + 2 + QUIET_S)
                    figs["idle"]["dispatch"] = idle_mod.measure(
                        hosts, "dispatch", mode.idle_s
                    ).summary()
                dispatch.stop_everywhere()
                if "original" in which:
                    for host, side in zip(hosts, ("devbox", "gpubox"), strict=True):
                        original.start_watcher(
                            host, side, cap=2, agent="fake-agent", poll_sec=poll_sec
                        )
                    time.sleep(poll_sec + 2)
                    figs["idle"]["original"] = idle_mod.measure(
                        hosts, "original", mode.idle_s
                    ).summary()
                    original.stop()
    return out


# ----------------------------------------------------------------------------- report


def _get(figs: dict[str, Any], *path: str) -> Any:
    node: Any = figs
    for key in path:
        if not isinstance(node, dict) or key not in node:
            return None
        node = node[key]
    return node


def _num(value: Any) -> float | None:
    if isinstance(value, int | float) and not math.isnan(value):
        return float(value)
    return None


def _rows(figs: dict[str, Any], poll_sec: int) -> list[tuple[str, str, str, str]]:
    rows: list[tuple[str, str, str, str]] = []

    def add(label: str, d: float | None, o: float | None, fmt: Any, note_o: str = "") -> None:
        rows.append(
            (
                label,
                fmt(d) if d is not None else "n/a",
                (fmt(o) if o is not None else "n/a") + note_o,
                fmt_ratio(ratio(d, o)),
            )
        )

    for site in ("local", "sshfs"):
        key = f"latency_{site}"
        if key not in figs:
            continue
        n = _get(figs, key, "dispatch", "n")
        for what, label in (("agent", "send → agent start"), ("result", "send → result")):
            for q in ("p50", "p99"):
                add(
                    f"{site}: {label} {q} (n={n})",
                    _num(_get(figs, key, "dispatch", f"{what}_{q}")),
                    _num(_get(figs, key, "original", f"{what}_{q}")),
                    fmt_seconds,
                )
    for site in ("local", "sshfs"):
        key = f"latency_{site}_quiet"
        if key not in figs:
            continue
        n = _get(figs, key, "dispatch", "n")
        for q in ("p50", "p99"):
            add(
                f"{site}: send → agent start {q}, the first task after {QUIET_S:.0f} s of quiet "
                f"(n={n}; the original: its figure above)",
                _num(_get(figs, key, "dispatch", f"agent_{q}")),
                _num(_get(figs, f"latency_{site}", "original", f"agent_{q}")),
                fmt_seconds,
            )
    for cap in (2, 8):
        key = f"throughput_cap{cap}"
        if key in figs:
            n = _get(figs, key, "dispatch", "n")
            add(
                f"throughput, cap {cap}, burst of {n}, no-op agent (tasks/s)",
                _num(_get(figs, key, "dispatch", "tasks_per_s")),
                _num(_get(figs, key, "original", "tasks_per_s")),
                lambda v: f"{v:.2f}",
            )
    drains = sorted(int(k.split("_")[1]) for k in figs if k.startswith("drain_"))
    for size in drains:
        key = f"drain_{size}"
        extrap = _get(figs, key, "original", "extrapolated")
        note = ""
        if extrap:
            done = _get(figs, key, "original", "completed")
            window = _get(figs, key, "original", "window_s")
            note = f" (extrapolated: {done}/{size} done in {window:g} s window)"
        add(
            f"drain {size} queued tasks, cap 2 (s)",
            _num(_get(figs, key, "dispatch", "seconds")),
            _num(_get(figs, key, "original", "seconds")),
            lambda v: f"{v:.1f} s",
            note,
        )
    if len(drains) == 2:
        small, large = (f"drain_{s}" for s in drains)

        def scale(system: str) -> float | None:
            a, b = (
                _num(_get(figs, small, system, "seconds")),
                _num(_get(figs, large, system, "seconds")),
            )
            return b / a if a and b is not None else None

        linear = _get(figs, large, "original", "extrapolated")
        add(
            f"drain {drains[1]} ÷ drain {drains[0]}",
            scale("dispatch"),
            scale("original"),
            lambda v: f"{v:.1f}",
            " (extrapolated, so linear by construction)" if linear else "",
        )
    if "idle" in figs:
        secs = _num(_get(figs, "idle", "dispatch", "seconds")) or 0
        label = f"idle {secs:.0f} s, both hosts"
        add(
            f"{label}: CPU time of the system",
            _num(_get(figs, "idle", "dispatch", "cpu_s")),
            _num(_get(figs, "idle", "original", "cpu_s")),
            lambda v: f"{v * 1000:.0f} ms",
        )
        add(
            f"{label}: CPU time of the whole hosts (systemd, journald, sshfs included)",
            _num(_get(figs, "idle", "dispatch", "host_cpu_s")),
            _num(_get(figs, "idle", "original", "host_cpu_s")),
            lambda v: f"{v * 1000:.0f} ms",
        )
        for what, label2, scale_by in (
            ("rss_mean_kib", "resident memory (VmRSS), time average", 1024),
            ("rss_max_kib", "resident memory (VmRSS), peak", 1024),
            ("cgroup_mean_bytes", "unit memory cgroups (MemoryCurrent), time average", 1024 * 1024),
            ("cgroup_max_bytes", "unit memory cgroups (MemoryCurrent), peak", 1024 * 1024),
        ):
            add(
                f"{label}: {label2}",
                _num(_get(figs, "idle", "dispatch", what)),
                _num(_get(figs, "idle", "original", what)),
                lambda v, s=scale_by: f"{v / s:.1f} MiB",
            )
        add(
            f"{label}: processes of the system, time average",
            _num(_get(figs, "idle", "dispatch", "procs_mean")),
            _num(_get(figs, "idle", "original", "procs_mean")),
            lambda v: f"{v:.2f}",
        )
        add(
            f"{label}: share of the time any process of the system exists",
            _num(_get(figs, "idle", "dispatch", "procs_time_share")),
            _num(_get(figs, "idle", "original", "procs_time_share")),
            lambda v: f"{v * 100:.1f} %",
        )
        add(
            f"{label}: longest-lived process of the system",
            _num(_get(figs, "idle", "dispatch", "longest_pid_s")),
            _num(_get(figs, "idle", "original", "longest_pid_s")),
            lambda v: f"{v:.2f} s",
        )
    return rows


def _targets(figs: dict[str, Any], poll_sec: int) -> list[tuple[str, str, str, str]]:
    out: list[tuple[str, str, str, str]] = []

    def verdict(ok: bool) -> str:
        return "**met**" if ok else "**missed**"

    # Issue 15's targets: times in seconds, "x" a ratio to the original in the same run.
    for q, goal in (("p50", 0.15), ("p99", 0.3)):
        v = _num(_get(figs, "latency_local", "dispatch", f"agent_{q}"))
        if v is not None:
            out.append(
                (
                    f"local send → agent start {q} ≤ {goal * 1000:.0f} ms",
                    fmt_seconds(v),
                    verdict(v <= goal),
                    f"{(v - goal) * 1000:+.0f} ms vs the target",
                )
            )
    for what, label in (("agent", "agent start"), ("result", "result")):
        v = _num(_get(figs, "latency_sshfs", "dispatch", f"{what}_p50"))
        o = _num(_get(figs, "latency_sshfs", "original", f"{what}_p50"))
        if v is not None and o:
            out.append(
                (
                    f"sshfs send → {label} p50 ≤ 0.5x the original's ({fmt_seconds(o)})",
                    f"{fmt_seconds(v)} ({v / o:.2f}x)",
                    verdict(v <= 0.5 * o),
                    f"{v / o / 0.5:.2f}x the target",
                )
            )
        v = _num(_get(figs, "latency_sshfs", "dispatch", f"{what}_p99"))
        if v is not None:
            out.append(
                (
                    f"sshfs send → {label} p99 ≤ 1 s",
                    fmt_seconds(v),
                    verdict(v <= 1.0),
                    f"{v - 1.0:+.2f} s vs the target",
                )
            )
    d = _num(_get(figs, "throughput_cap2", "dispatch", "tasks_per_s"))
    o = _num(_get(figs, "throughput_cap2", "original", "tasks_per_s"))
    if d is not None and o:
        r = d / o
        out.append(
            (
                "throughput at cap 2 ≥ 10x the original's",
                f"{r:.1f}x ({d:.2f} vs {o:.2f} tasks/s)",
                verdict(r >= 10),
                f"{r / 10:.2f}x the target; 10x would be {10 * o:.2f} tasks/s",
            )
        )
    drains = sorted(int(k.split("_")[1]) for k in figs if k.startswith("drain_"))
    if len(drains) == 2:
        a = _num(_get(figs, f"drain_{drains[0]}", "dispatch", "seconds"))
        b = _num(_get(figs, f"drain_{drains[1]}", "dispatch", "seconds"))
        if a and b is not None:
            k = drains[1] / drains[0]
            limit = k * 1.1
            out.append(
                (
                    f"draining {drains[1]} ≤ {limit:g}x the time for {drains[0]}",
                    f"{b / a:.1f}x ({b:.1f} s vs {a:.1f} s)",
                    verdict(b / a <= limit),
                    f"{b / a - limit:+.1f} vs the {limit:g}x limit",
                )
            )
    for key, label, limit in (
        ("cpu_s", "idle: CPU of the system ≤ the original's", 1.0),
        ("host_cpu_s", "idle: CPU of the whole hosts ≤ the original's", 1.0),
        ("rss_mean_kib", "idle: average resident memory ≤ half the original's", 0.5),
    ):
        d, o = _num(_get(figs, "idle", "dispatch", key)), _num(_get(figs, "idle", "original", key))
        if d is not None and o:
            out.append(
                (label, f"{d / o:.2f}x", verdict(d / o <= limit), f"{d / o / limit:.2f}x the limit")
            )
    return out


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def report(data: dict[str, Any], argv: list[str], elapsed: float) -> str:
    figs = data["figures"]
    poll = data["poll_sec"]
    parts = [
        "# dispatch beside the original: bench results",
        "",
        f"Generated by `{' '.join(argv)}` ({data['mode']} mode) in {elapsed / 60:.1f} min. "
        "How each figure is taken: bench/README.md. Raw samples: bench/results.json.",
        "",
        "## Machine",
        "",
        _table(("", ""), [(k, v) for k, v in data["machine"].items()]),
        "",
        "## Settings",
        "",
        f"- DISPATCH_POLL_SEC={poll} for both systems, DISPATCH_MAX_PARALLEL=2 unless a row "
        "says otherwise. dispatch: DISPATCH_PROMOTE_LINGER_S at its default "
        f"({Config.promote_linger_s} s), as shipped.",
        "- dispatch: the shipped units and generator under systemd 252 booted in PID "
        "namespaces (path + timer units, the systemd launcher, agent run as `nobody` in "
        "`dispatch-exec@<id>.service`). The original: `bin/dispatch-watch-b` (its README's "
        "way) as a transient unit of the same namespaced systemd, `bin/dispatch-send`.",
        "- Agents: `fake-agent` (a wrapper around `python -m dispatch.ops.fake_agent`, which "
        "records its own start) for latency and idle, `noop-agent` (one stream-json line "
        "from /bin/sh) for throughput and drains; the same wrappers for both systems.",
        "- local: one host, the share a local directory. sshfs: two hosts (own systemd, "
        "network namespace and sshfs mount each) and a file-server namespace "
        "(tests/e2e/cluster.py).",
        "",
        "## Figures",
        "",
        "Ratio = dispatch ÷ original: below 1 is better for times, CPU and memory; above 1 "
        "is better for throughput.",
        "",
        _table(("figure", "dispatch", "original", "dispatch/original"), _rows(figs, poll)),
        "",
        "## Targets",
        "",
        _table(("target", "dispatch", "verdict", "by how much"), _targets(figs, poll)),
        "",
    ]
    return "\n".join(parts)


def _analysis(path: Path) -> str:
    """The hand-written ## Analysis section of an existing RESULTS.md, kept across runs."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        return ""
    marker = "\n## Analysis"
    index = text.find(marker)
    return text[index:] if index >= 0 else ""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.run",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--mode", choices=sorted(MODES), default="quick")
    parser.add_argument(
        "--only",
        default=",".join(FIGURES),
        help=f"comma-separated figures among {', '.join(FIGURES)}",
    )
    parser.add_argument(
        "--systems",
        default="dispatch,original",
        help="measure only these (comma-separated: dispatch, original)",
    )
    parser.add_argument("--poll-sec", type=int, default=3)
    parser.add_argument("--seed", type=int, default=20261124)
    parser.add_argument(
        "--write", action="store_true", help="write bench/RESULTS.md and bench/results.json"
    )
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    parser.add_argument(
        "--render",
        metavar="JSON",
        type=Path,
        help="measure nothing: print (with --write, write) the report of a "
        "results.json written by an earlier run",
    )
    args = parser.parse_args(argv)
    if args.render is not None:
        data = json.loads(args.render.read_text())
        return _output(data, args.write)
    figures = {f.strip() for f in args.only.split(",") if f.strip()}
    unknown = figures - set(FIGURES)
    if unknown:
        parser.error(f"unknown figures: {', '.join(sorted(unknown))}")
    which = {s.strip() for s in args.systems.split(",") if s.strip()}
    if not which or which - {"dispatch", "original"}:
        parser.error("--systems: dispatch, original or both")
    if "original" in which and original_missing():
        parser.error(f"{original_missing()}: set it, or measure --systems dispatch")
    if os.geteuid() != 0:
        parser.error("run as root: the bench boots systemd in namespaces")

    def terminate(signum: int, frame: FrameType | None) -> None:
        raise SystemExit(f"bench: signal {signum}, tearing down")

    signal.signal(signal.SIGTERM, terminate)
    signal.signal(signal.SIGHUP, terminate)
    compile_checkout()
    workdir = Path(tempfile.mkdtemp(prefix="dispatch-bench-"))
    workdir.chmod(0o755)
    began = time.monotonic()
    try:
        data = run(MODES[args.mode], figures, args.poll_sec, args.seed, workdir, which)
    finally:
        if args.keep:
            log(f"work directory kept: {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    elapsed = time.monotonic() - began
    data["elapsed_s"] = elapsed
    data["argv"] = ["python -m bench.run", *(argv if argv is not None else sys.argv[1:])]
    _output(data, args.write)
    log(f"done in {elapsed / 60:.1f} min")
    return 0


def _output(data: dict[str, Any], write: bool) -> int:
    text = report(data, data["argv"], data["elapsed_s"])
    print(text)
    if os.environ.get("BENCH_SAVE"):  # the raw samples of a partial run, for --render
        Path(os.environ["BENCH_SAVE"]).write_text(json.dumps(data, indent=1) + "\n")
    if write:
        results = TOP / "bench" / "RESULTS.md"
        results.write_text(text + _analysis(results))
        (TOP / "bench" / "results.json").write_text(json.dumps(data, indent=1) + "\n")
        log(f"wrote {results} and bench/results.json")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
