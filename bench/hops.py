"""Where dispatch's send → agent-start time goes, hop by hop, on a local share (or sshfs).

    .venv/bin/python -m bench.hops [-n 10]                # about 30 s
    .venv/bin/python -m bench.hops -n 6 --quiet 35       # the cold case, about 4 min

Boots the same local host as bench.run, sends n tasks one at a time (fake agent, the
systemd launcher) and reads each task's story back from the host's journal: when the
sender had written it, when systemd started the promote pass, when promote admitted and
launched it, when systemd started the execution unit, when the executor started the agent,
when the agent itself started. Prints
the median time of each hop, then what the Python start-up of each hop costs (a bare
interpreter and the imports `dispatch promote`/`dispatch exec` pay before doing anything)."""

from __future__ import annotations

import argparse
import json
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.common import compile_checkout, log
from bench.figures import agent_start
from bench.sites import local_site, sshfs_site
from bench.systems import wait_results

# (label, predicate on a journal entry) in the order they happen
MARKS: tuple[tuple[str, str, str], ...] = (
    # The sender's own story: signing and writing the file, after it stamped `created`. In
    # the receiver's journal only on the local site (0 ms on sshfs: the sender is devbox).
    ("the sender has written it (task_sent, local site)", "DISPATCH_EVENT", "task_sent"),
    # Absent (0 ms) when a promoter that stays after a busy pass took the task.
    ("path unit starts the promote pass", "MESSAGE_PREFIX", "Starting dispatch-watch.service"),
    ("promote admits the task (task_queued)", "DISPATCH_EVENT", "task_queued"),
    ("promote asked systemd to start it (exec_launched)", "DISPATCH_EVENT", "exec_launched"),
    ("systemd starts dispatch-exec@ (job begins)", "MESSAGE_PREFIX", "Starting dispatch-exec@"),
    (
        "dispatch-exec@ running (Type=exec: after execve)",
        "MESSAGE_PREFIX",
        "Started dispatch-exec@",
    ),
    ("executor starts the agent (exec_start)", "DISPATCH_EVENT", "exec_start"),
)


def _entries(host_run: subprocess.CompletedProcess[str]) -> list[dict[str, object]]:
    rows = []
    for line in host_run.stdout.splitlines():
        try:
            rows.append(json.loads(line))
        except ValueError:
            continue
    return rows


def _mark_time(
    entries: list[dict[str, object]], task_id: str, kind: str, value: str, after: float
) -> float | None:
    for entry in entries:
        at = int(str(entry["__REALTIME_TIMESTAMP"])) / 1e6
        if at < after:
            continue
        if kind == "DISPATCH_EVENT":
            if entry.get("DISPATCH_EVENT") == value and entry.get("DISPATCH_TASK_ID") == task_id:
                # After a quick start, exec_start is logged once the executor has loaded the
                # rest, after the agent started; it says when that was.
                spawned = entry.get("DISPATCH_SPAWNED_AT")
                return float(str(spawned)) if spawned else at
        else:
            message = entry.get("MESSAGE")
            if (
                isinstance(message, str)
                and message.startswith(value)
                and ("dispatch-exec@" not in value or task_id in message)
            ):
                return at
    return None


def _startup_ms(code: str, n: int = 15) -> float:
    times = []
    for _ in range(n):
        began = time.perf_counter()
        subprocess.run([sys.executable, "-c", code], check=True)
        times.append(time.perf_counter() - began)
    return statistics.median(times) * 1000


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.hops",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("-n", type=int, default=10, help="tasks to send (one at a time)")
    parser.add_argument("--poll-sec", type=int, default=3)
    parser.add_argument(
        "--pause",
        action="store_true",
        help="pause as bench.run's latency figure does: after each result, a random time in "
        "[0, poll-sec) (seeded), instead of 0.7 s after the agent started",
    )
    parser.add_argument(
        "--quiet",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="wait this long before each send instead, so that every task is a first task "
        "after quiet (35 s: no promoter staying, no signer running), as the local quiet figure",
    )
    parser.add_argument(
        "--site",
        choices=("local", "sshfs"),
        default="local",
        help="sshfs: two hosts (tests/e2e/cluster.py); the path unit's hop then includes the "
        "sender's and the sensor's "
        "(or, with BENCH_WATCH_MODE=timer, the timer's) delay",
    )
    parser.add_argument(
        "--everywhere",
        action="store_true",
        help="start every host's node units first, as bench.run's sshfs figure does (the "
        "sender's own sensor, timer and heartbeat run meanwhile)",
    )
    args = parser.parse_args(argv)
    compile_checkout()
    make_site = sshfs_site if args.site == "sshfs" else local_site
    workdir = Path(tempfile.mkdtemp(prefix="dispatch-bench-"))
    workdir.chmod(0o755)
    hops: list[list[float]] = [[] for _ in range(len(MARKS) + 1)]
    totals: list[float] = []
    try:
        with make_site(workdir, args.poll_sec) as (dispatch, _original):
            host = dispatch.site.receiver
            if args.everywhere:
                dispatch.start_everywhere()
            dispatch.start(cap=2, agent="fake-agent", poll_sec=args.poll_sec)
            time.sleep(args.poll_sec + 2)  # past the start-up passes
            rng = random.Random(20261124)
            for i in range(args.n):
                # 0.7 s by default: locally inotify sees the send, so no timer phase to
                # sample; --pause samples it (and the sensor's) as the latency figure does.
                if args.quiet:
                    time.sleep(args.quiet)
                else:
                    time.sleep(rng.uniform(0, args.poll_sec) if args.pause else 0.7)
                request = f"bench hops {i} {time.time_ns()}"
                sent = dispatch.send(request)
                agent = agent_start(dispatch, request)
                if args.pause:
                    wait_results(dispatch.lane, {sent.task_id}, 60, interval=0.005)
                else:
                    time.sleep(0.3)
                entries = _entries(
                    host.run(
                        [
                            "journalctl",
                            "-o",
                            "json",
                            "--no-pager",
                            "--since",
                            f"@{int(sent.sent_at) - 1}",
                        ]
                    )
                )
                marks = [sent.sent_at]
                for k, (_label, kind, value) in enumerate(MARKS):
                    # The sender logs task_sent after the rename and its history line, so
                    # systemd may log the pass's start first: search that from the send.
                    after = sent.sent_at if k == 1 else marks[-1]
                    at = _mark_time(entries, sent.task_id, kind, value, after - 0.002)
                    if k == 1 and at is not None and at < marks[-1]:
                        marks[-1] = at  # the sender's hop ends where the receiver's began
                    marks.append(at if at is not None else marks[-1])
                marks.append(agent)
                totals.append(agent - sent.sent_at)
                for k in range(len(hops)):
                    hops[k].append(marks[k + 1] - marks[k])
            if args.everywhere:
                dispatch.stop_everywhere()  # the receiver's units too
            else:
                dispatch.stop()
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    labels = [label for label, _k, _v in MARKS] + ["the agent process itself starts"]
    how = "each after its result and a pause" if args.pause else "one at a time"
    if args.quiet:
        how = f"each after {args.quiet:g} s of quiet"
    print(f"dispatch, {args.site} share, {args.n} tasks sent {how}: median of each hop")
    print()
    print("| from the previous step to | median | max |")
    print("|---|---|---|")
    total = 0.0
    for label, values in zip(labels, hops, strict=True):
        median = statistics.median(values)
        total += median
        print(f"| {label} | {median * 1000:.0f} ms | {max(values) * 1000:.0f} ms |")
    print(f"| **send → agent start (sum of medians)** | **{total * 1000:.0f} ms** | |")
    print(
        f"| send → agent start, each task's own (median, max) | "
        f"{statistics.median(totals) * 1000:.0f} ms | {max(totals) * 1000:.0f} ms |"
    )
    print()
    log("measuring Python start-up of one hop")
    bare = _startup_ms("pass")
    cli = _startup_ms("import dispatch.cli")
    print(
        f"Python start-up, median of 15: bare interpreter {bare:.0f} ms; "
        f"`import dispatch.cli` (what `dispatch promote` and `dispatch exec` load before "
        f"doing anything) {cli:.0f} ms, i.e. {cli - bare:.0f} ms of imports per hop."
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
