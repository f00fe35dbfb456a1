"""A node whose config broke says so in its heartbeat, and its peers' status and doctor show
it as a failure for that peer: a claim, displayed, never acted on."""

from __future__ import annotations

import json
from pathlib import Path

from dispatch.core import broken_config
from dispatch.core.fsio import atomic_write, dump_json
from dispatch.receive import sensor, sensor_heartbeat
from tests.conftest import Pair
from tests.unit.helpers import cli, configure


def _peer_check(pair: Pair) -> dict[str, object]:
    proc = cli(pair.sender, "doctor", "--json")
    return next(c for c in json.loads(proc.stdout) if c["check"] == "peer gpubox")


def test_broken_config_reaches_the_peers_status_and_doctor(pair: Pair) -> None:
    assert cli(pair.receiver, "heartbeat").returncode == 0
    assert _peer_check(pair)["ok"] is True
    configure(pair.receiver, DISPATCH_POLL_SEC="3s")
    # The units' commands fail visibly and say why; the beat still goes out, saying why.
    promote = cli(pair.receiver, "promote")
    assert promote.returncode == 2 and "DISPATCH_POLL_SEC" in promote.stderr
    marker = pair.receiver.home / "state" / broken_config.PROBLEM_FILE
    assert "DISPATCH_POLL_SEC" in marker.read_text()
    beat_proc = cli(pair.receiver, "heartbeat")
    assert beat_proc.returncode == 2 and "DISPATCH_POLL_SEC" in beat_proc.stderr
    beat = json.loads((pair.root / "heartbeats" / "gpubox.json").read_text())
    assert beat["node"] == "gpubox" and "DISPATCH_POLL_SEC" in beat["config_problem"]
    # The key id its last good beat recorded: the peer's doctor still compares it.
    assert beat["kid"].startswith("ed") and len(beat["kid"]) == 18

    status = json.loads(cli(pair.sender, "status", "--json").stdout)
    (peer,) = status["peers"]
    assert "DISPATCH_POLL_SEC" in peer["config_problem"] and peer["stale"] is False
    text = cli(pair.sender, "status", NO_COLOR="1").stdout
    line = next(x for x in text.splitlines() if x.startswith("peer gpubox:"))
    assert " FAIL config broken: " in line and "DISPATCH_POLL_SEC" in line
    check = _peer_check(pair)
    assert check["ok"] is False
    assert "config broken: " in str(check["detail"]) and "DISPATCH_POLL_SEC" in str(check["detail"])
    assert "fix its config" in str(check["hint"])
    doctor = cli(pair.sender, "doctor")
    assert doctor.returncode == 1
    assert any(x.startswith("FAIL  peer gpubox") for x in doctor.stdout.splitlines())

    # Fixed: the next beat carries no claim, and the marker is gone.
    conf = Path(pair.receiver.env["DISPATCH_CONFIG"])
    conf.write_text(conf.read_text().replace("DISPATCH_POLL_SEC=3s\n", ""))
    assert cli(pair.receiver, "heartbeat").returncode == 0
    assert not marker.exists()
    beat = json.loads((pair.root / "heartbeats" / "gpubox.json").read_text())
    assert "config_problem" not in beat
    assert _peer_check(pair)["ok"] is True


def test_the_sensor_beat_carries_the_recorded_problem(tmp_path: Path) -> None:
    """A sensor started before the config broke runs on its old settings: its beats must not
    cover the problem with a healthy-looking one."""
    state = tmp_path / "state"
    state.mkdir()
    (state / "heartbeat.identity").write_text("version=9\nkid=ed0123456789abcdef\n")
    settings = sensor.Settings(
        root=str(tmp_path), node="gpubox", peers=("devbox",), state_dir=str(state), interval_s=1
    )
    healthy = json.loads(beat_of(settings, state))
    assert "config_problem" not in healthy
    env = {"DISPATCH_STATE_DIR": str(state), "DISPATCH_CONFIG": str(tmp_path / "none")}
    broken_config.record('DISPATCH_POLL_SEC: bad "3s"\n\x1b[31m', env)
    beat = json.loads(beat_of(settings, state))
    assert beat["config_problem"] == 'DISPATCH_POLL_SEC: bad "3s" [31m'  # no escape
    assert beat["running"] == 0 and beat["kid"] == "ed0123456789abcdef"
    broken_config.clear(state)
    assert "config_problem" not in json.loads(beat_of(settings, state))


def test_old_heartbeats_still_read_and_a_claim_is_only_shown(pair: Pair) -> None:
    beat_path = pair.root / "heartbeats" / "gpubox.json"
    assert cli(pair.receiver, "heartbeat").returncode == 0
    old = json.loads(beat_path.read_text())
    old.pop("config_problem", None)  # what a node of an earlier version writes
    atomic_write(beat_path, dump_json(old))
    (peer,) = json.loads(cli(pair.sender, "status", "--json").stdout)["peers"]
    assert peer["config_problem"] == "" and peer["heartbeat_age_s"] is not None
    assert _peer_check(pair)["ok"] is True
    # Anyone can write the share: a planted claim is shown as one bounded, printable line,
    # and sending to that peer goes on as before.
    atomic_write(beat_path, dump_json({**old, "config_problem": "x\n\x07" * 500}))
    (peer,) = json.loads(cli(pair.sender, "status", "--json").stdout)["peers"]
    claim = peer["config_problem"]
    assert claim.startswith("x x") and len(claim) <= broken_config.MAX_PROBLEM_CHARS
    assert claim.isprintable()
    sent = cli(pair.sender, "send", "--to", "gpubox", "--request", "still sent")
    assert sent.returncode == 0, sent.stderr
    for kind in (123, ["a"], None):
        atomic_write(beat_path, dump_json({**old, "config_problem": kind}))
        (peer,) = json.loads(cli(pair.sender, "status", "--json").stdout)["peers"]
        assert peer["config_problem"] == ""


def beat_of(settings: sensor.Settings, state: Path) -> bytes:
    return sensor_heartbeat.heartbeat(
        settings, sensor_heartbeat.read_identity(str(state)) or {}, 5.0
    )
