"""The Prometheus textfile the heartbeat writes, read back with prometheus_client's own
text-format parser and checked against a known set of results and rejections."""

from __future__ import annotations

import json
import os
from datetime import timedelta
from pathlib import Path
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from dispatch.core.spool import set_killswitch
from dispatch.core.wire import now_utc, rfc3339
from dispatch.receive.launch.process import ProcessLauncher
from dispatch.receive.promote import promote
from dispatch.send import task as sender
from tests.conftest import Pair
from tests.unit.helpers import (
    cli,
    configure,
    drain,
    drop,
    envelope,
    lane_in,
    promote_once,
    runs_of,
    wait_for,
)

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def parse(text: str) -> tuple[dict[str, str], Samples]:
    """(family name -> type, (sample name, labels) -> value)."""
    types: dict[str, str] = {}
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        types[family.name] = family.type
        for sample in family.samples:
            samples[sample.name, frozenset(sample.labels.items())] = sample.value
    return types, samples


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples[name, frozenset({"node": "gpubox", **labels}.items())]


def send(pair: Pair, request: str, **kwargs: Any) -> str:
    tx = pair.sender.node()
    return sender.deliver(tx, sender.build(tx, to="gpubox", request=request, **kwargs)).envelope.id


def test_metrics_file_parses_and_counts(pair: Pair, tmp_path: Path) -> None:
    textfile = tmp_path / "node-exporter" / "dispatch.prom"
    textfile.parent.mkdir()
    configure(pair.receiver, DISPATCH_METRICS_FILE=str(textfile))
    lane = lane_in(pair)
    # Finished: two ok, one error.
    send(pair, "fine")
    send(pair, "also fine")
    send(pair, "broken exit=3")
    # Refused: one malformed and one forged (neither authenticated: no result), one stale
    # (it authenticated: a signed `rejected` result).
    drop(lane, b"{not json", name="junk.json")
    drop(lane, {**envelope(pair), "request": "tampered after signing"})
    drop(lane, envelope(pair, created=rfc3339(now_utc() - timedelta(days=2))))
    drain(pair.receiver.node())
    # One running...
    rx = pair.receiver.node()
    launcher = ProcessLauncher(rx)
    long_id = send(pair, "long job sleep=60")
    promote(rx, launcher)
    try:
        wait_for(lambda: bool(runs_of(pair, long_id)), timeout=30, what="the long job")
        # ...two queued behind a soft killswitch, one waiting for its ack, one in the inbox.
        set_killswitch(rx.spool, hard=False, reason="metrics test")
        send(pair, "queued one")
        send(pair, "queued two")
        send(pair, "needs an ack", require_ack=True)
        promote_once(rx)
        send(pair, "just arrived")

        proc = cli(pair.receiver, "heartbeat", "--json")
        assert proc.returncode == 0, proc.stderr
        beat = json.loads(proc.stdout)
        text = textfile.read_text()
    finally:
        launcher.stop(long_id)
        launcher.wait_all(30)

    types, samples = parse(text)
    assert types == {
        "dispatch_tasks": "counter",
        "dispatch_rejections": "counter",
        "dispatch_queue_depth": "gauge",
        "dispatch_junk_dropped": "counter",
        "dispatch_running": "gauge",
        "dispatch_killswitch": "gauge",
        "dispatch_last_heartbeat_timestamp_seconds": "gauge",
    }
    tasks = {
        dict(labels)["status"]: v
        for (name, labels), v in samples.items()
        if name == "dispatch_tasks_total"
    }
    # Every status has its series from the start (rate() sees the first one), most at 0.
    assert tasks == {
        "ok": 2,
        "error": 1,
        "rejected": 1,
        "timeout": 0,
        "stalled": 0,
        "killed": 0,
        "interrupted": 0,
        "cancelled": 0,
    }
    reasons = {
        dict(labels)["reason"]: v
        for (name, labels), v in samples.items()
        if name == "dispatch_rejections_total"
    }
    assert reasons == {"malformed": 1, "bad_signature": 1, "stale": 1}
    for stage, depth in (("inbox", 1), ("pending_ack", 1), ("queued", 2)):
        assert value(samples, "dispatch_queue_depth", lane="devbox-to-gpubox", stage=stage) == depth
    assert value(samples, "dispatch_running") == 1 == beat["running"]
    assert value(samples, "dispatch_killswitch") == 1
    assert value(samples, "dispatch_last_heartbeat_timestamp_seconds") == round(beat["unix"], 3)
    # node_exporter's convention: a .prom file replaced whole, no temp files left beside it.
    assert os.listdir(textfile.parent) == ["dispatch.prom"]
    assert oct(textfile.stat().st_mode & 0o777) == "0o644"


def test_counts_follow_new_results_and_survive_the_cache(pair: Pair, tmp_path: Path) -> None:
    textfile = tmp_path / "dispatch.prom"
    configure(pair.receiver, DISPATCH_METRICS_FILE=str(textfile))
    send(pair, "one")
    drain(pair.receiver.node())
    assert cli(pair.receiver, "heartbeat").returncode == 0
    _, first = parse(textfile.read_text())
    assert value(first, "dispatch_tasks_total", status="ok") == 1
    send(pair, "two")
    send(pair, "three exit=1")
    drain(pair.receiver.node())
    assert cli(pair.receiver, "heartbeat").returncode == 0
    _, second = parse(textfile.read_text())
    assert value(second, "dispatch_tasks_total", status="ok") == 2
    assert value(second, "dispatch_tasks_total", status="error") == 1
    assert value(second, "dispatch_running") == 0
    assert value(second, "dispatch_killswitch") == 0


def test_no_textfile_directory_no_file_and_no_error(pair: Pair, tmp_path: Path) -> None:
    textfile = tmp_path / "absent" / "dispatch.prom"
    configure(pair.receiver, DISPATCH_METRICS_FILE=str(textfile))
    proc = cli(pair.receiver, "heartbeat")
    assert proc.returncode == 0 and proc.stderr == ""
    assert not textfile.parent.exists()


def test_an_unwritable_textfile_is_a_warning_not_a_failed_heartbeat(
    pair: Pair, tmp_path: Path
) -> None:
    textfile = tmp_path / "dispatch.prom"
    textfile.mkdir()  # a directory where the file should be: the rename fails
    configure(pair.receiver, DISPATCH_METRICS_FILE=str(textfile))
    proc = cli(pair.receiver, "heartbeat")
    assert proc.returncode == 0, proc.stderr
    log = (pair.root / "logs" / "gpubox.jsonl").read_text()
    assert '"event": "metrics_error"' in log and str(textfile) in log
    assert (pair.root / "heartbeats" / "gpubox.json").exists()
