"""The real command line, as a subprocess: output shapes, exit codes, one-line errors."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from dispatch.core.wire import new_id
from tests.conftest import Pair
from tests.unit.helpers import (
    BIN,
    clean_env,
    cli,
    drain,
    lane_in,
    result_json,
    run,
)


def test_missing_root_is_one_line_naming_the_key(tmp_path: Path) -> None:
    conf = tmp_path / "empty.conf"
    conf.write_text("")
    proc = cli(None, "status", DISPATCH_CONFIG=str(conf))
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and proc.stderr.startswith("dispatch: ")
    assert "DISPATCH_ROOT" in proc.stderr
    assert "Traceback" not in proc.stderr
    debug = cli(None, "--debug", "status", DISPATCH_CONFIG=str(conf))
    assert debug.returncode == 2
    assert "Traceback (most recent call last)" in debug.stderr
    assert "DISPATCH_ROOT" in debug.stderr


def test_invalid_config_is_one_line_with_every_problem(tmp_path: Path) -> None:
    conf = tmp_path / "bad.conf"
    conf.write_text("DISPATCH_ROOT=/srv\nDISPATCH_MAX_PARALLEL=none\nDISPATCH_TYPO=1\n")
    proc = cli(None, "status", DISPATCH_CONFIG=str(conf), DISPATCH_POLL_SEC="-1")
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1
    for key in ("DISPATCH_MAX_PARALLEL", "DISPATCH_TYPO", "DISPATCH_POLL_SEC"):
        assert key in proc.stderr


def test_usage_errors_exit_2(pair: Pair) -> None:
    assert cli(pair.sender, "no-such-command").returncode == 2
    assert cli(pair.sender, "send", "--to", "gpubox").returncode == 2  # --request missing
    proc = cli(pair.sender, "send", "--to", "nowhere", "--request", "x")
    assert proc.returncode == 2 and "unknown peer" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_console_script_and_version() -> None:
    proc = run([str(BIN / "dispatch"), "--version"], clean_env())
    assert proc.returncode == 0 and "dispatch, version" in proc.stdout


def test_send_json_shape(pair: Pair) -> None:
    proc = cli(
        pair.sender,
        "send",
        "--to",
        "gpubox",
        "--request",
        "hi",
        "--json",
        "--priority",
        "high",
        "--timeout",
        "30",
    )
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert set(out) == {"id", "path"}
    envelope = json.loads(Path(out["path"]).read_text())
    assert envelope["id"] == out["id"] and envelope["priority"] == "high"
    assert envelope["timeout_s"] == 30
    assert Path(out["path"]).parent == lane_in(pair).inbox
    plain = cli(pair.sender, "send", "--to", "gpubox", "--request", "hi")
    task_id = plain.stdout.strip()
    assert (lane_in(pair).inbox / f"{task_id}.json").exists()


def test_send_wait_times_out_with_exit_4(pair: Pair) -> None:
    began = time.monotonic()
    proc = cli(
        pair.sender,
        "send",
        "--to",
        "gpubox",
        "--request",
        "nobody listens",
        "--wait",
        "--wait-timeout",
        "0.5",
    )
    assert proc.returncode == 4, proc.stderr
    assert time.monotonic() - began < 10
    assert "no result" in proc.stderr


def test_exit_codes_of_result_and_wait(pair: Pair) -> None:
    ok = json.loads(
        cli(pair.sender, "send", "--to", "gpubox", "--request", "fine", "--json").stdout
    )["id"]
    bad = json.loads(
        cli(pair.sender, "send", "--to", "gpubox", "--request", "boom exit=3", "--json").stdout
    )["id"]
    drain(pair.receiver.node())
    # 0: done and ok; the verified object on stdout.
    proc = cli(pair.sender, "result", ok, "--json")
    assert proc.returncode == 0, proc.stderr
    obj = json.loads(proc.stdout)
    assert obj["status"] == "ok" and obj["id"] == ok and len(obj["sig"]) == 128
    proc = cli(pair.sender, "wait", ok)
    assert proc.returncode == 0 and "fine" in proc.stdout
    # 1: the task failed.
    proc = cli(pair.sender, "result", bad)
    assert proc.returncode == 1 and "error" in proc.stderr
    assert cli(pair.sender, "wait", bad, "--timeout", "5").returncode == 1
    # 2: usage.
    assert cli(pair.sender, "result", "NOT-AN-ID").returncode == 2
    assert cli(pair.sender, "result", new_id()).returncode == 2
    # 4: waiting timed out on a task that never runs.
    never = json.loads(
        cli(pair.sender, "send", "--to", "gpubox", "--request", "later", "--json").stdout
    )["id"]
    began = time.monotonic()
    proc = cli(pair.sender, "wait", never, "--timeout", "0.5")
    assert proc.returncode == 4 and time.monotonic() - began < 10
    assert "inbox" in proc.stderr
    # 3: a result changed by one byte no longer verifies.
    path = lane_in(pair).result_path(ok)
    data = bytearray(path.read_bytes())
    at = data.index(b'"final_text": "') + len(b'"final_text": "')
    data[at] = ord("F") if data[at] != ord("F") else ord("G")
    path.write_bytes(bytes(data))
    proc = cli(pair.sender, "result", ok, "--json")
    assert proc.returncode == 3
    assert proc.stdout == "" and proc.stderr.count("\n") == 1
    assert "signature" in proc.stderr
    # `wait` does not take a result that does not verify for the outcome (issue 12,
    # finding 9: junk at done/<id>.result.json ended it): it waits on for the real one.
    proc = cli(pair.sender, "wait", ok, "--timeout", "1")
    assert proc.returncode == 4 and "ignored" in proc.stderr, proc.stderr
    # ... and so does one that is no longer JSON.
    path.write_bytes(path.read_bytes()[:-3])
    assert cli(pair.sender, "result", ok).returncode == 3


def test_status_json_schema(pair: Pair) -> None:
    assert cli(pair.sender, "heartbeat").returncode == 0
    proc = cli(pair.receiver, "status", "--json")
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    assert set(data) == {
        "node",
        "root",
        "version",
        "killswitch",
        "lanes",
        "executions",
        "peers",
        "faults",
        "root_problem",
    }
    assert data["executions"] == []
    assert data["node"] == "gpubox" and data["root"] == str(pair.root)
    assert set(data["killswitch"]) == {"on", "hard", "reason"}
    lanes = {lane["lane"]: lane for lane in data["lanes"]}
    assert set(lanes) == {"devbox-to-gpubox", "gpubox-to-devbox"}
    assert lanes["devbox-to-gpubox"]["direction"] == "in"
    assert set(lanes["devbox-to-gpubox"]) == {
        "lane",
        "direction",
        "inbox",
        "pending_ack",
        "queued",
        "running",
        "done",
        "rejected",
    }
    (peer,) = data["peers"]
    assert peer["node"] == "devbox" and peer["stale"] is False
    assert isinstance(peer["heartbeat_age_s"], float)
    cli(pair.sender, "send", "--to", "gpubox", "--request", "x")
    data = json.loads(cli(pair.receiver, "status", "--json").stdout)
    assert {x["lane"]: x for x in data["lanes"]}["devbox-to-gpubox"]["inbox"] == 1
    human = cli(pair.receiver, "status")
    assert human.returncode == 0 and "devbox-to-gpubox" in human.stdout


def test_killswitch_commands(pair: Pair) -> None:
    assert cli(pair.sender, "killswitch", "status").stdout.strip() == "off"
    assert cli(pair.sender, "killswitch", "on", "--reason", "deploy").returncode == 0
    assert (pair.root / "KILLSWITCH").exists()
    status = json.loads(cli(pair.receiver, "killswitch", "status", "--json").stdout)
    assert status == {"on": True, "hard": False, "reason": "deploy"}
    cli(pair.sender, "killswitch", "on", "--hard", "--reason", "fire")
    assert (pair.root / "KILLSWITCH").read_text().splitlines()[0] == "hard"
    assert cli(pair.receiver, "killswitch", "status").stdout.strip() == "on (hard): fire"
    data = json.loads(cli(pair.receiver, "status", "--json").stdout)
    assert data["killswitch"] == {"on": True, "hard": True, "reason": "fire"}
    assert cli(pair.sender, "killswitch", "off").stdout.strip() == "killswitch off"
    assert not (pair.root / "KILLSWITCH").exists()
    assert cli(pair.sender, "killswitch", "off").stdout.strip() == "killswitch was not on"


def test_keys_new_show_list_import(tmp_path: Path) -> None:
    conf = tmp_path / "k.conf"
    conf.write_text(f"DISPATCH_NODE=n1\nDISPATCH_KEY_DIR={tmp_path / 'ring'}\n")
    env = clean_env(DISPATCH_CONFIG=str(conf))  # no DISPATCH_ROOT needed for keys
    proc = cli(None, "keys", "new", env=env)
    assert proc.returncode == 0, proc.stderr
    kid = proc.stdout.strip()
    assert re.fullmatch(r"ed[0-9a-f]{16}", kid)
    key_path = tmp_path / "ring" / "n1.ed25519"
    assert key_path.stat().st_mode & 0o777 == 0o600
    assert b"PRIVATE KEY" in key_path.read_bytes()
    # One key pair per node: a second is a rotation, asked for by name.
    again = cli(None, "keys", "new", env=env)
    assert again.returncode == 2 and "dispatch keys rotate" in again.stderr
    shown = json.loads(cli(None, "keys", "show", "--json", env=env).stdout)
    assert shown["kid"] == kid and shown["line"].startswith("dispatch-ed25519 ")
    assert shown["line"].endswith(" n1") and shown["fingerprint"].startswith("SHA256:")
    # Its own public key is pinned beside the key directory, so its results verify here.
    assert shown["line"] in (tmp_path / "peers" / "n1.pub").read_text()
    # Import an original peer's HMAC key (schema 2/3 only): kid from its file name, 0600.
    peer = tmp_path / "peer.key"
    fd = os.open(peer, os.O_WRONLY | os.O_CREAT, 0o600)
    os.write(fd, b"p" * 64 + b"\n")
    os.close(fd)
    proc = cli(None, "keys", "import", str(peer), env=env)
    assert proc.returncode == 0 and proc.stdout.strip() == "peer"
    assert (tmp_path / "ring" / "peer.key").stat().st_mode & 0o777 == 0o600
    assert (tmp_path / "ring" / "peer.key").read_bytes().strip() == b"p" * 64
    rows = json.loads(cli(None, "keys", "list", "--json", env=env).stdout)
    assert [(r["kid"], r["kind"], r["signing"]) for r in rows] == [
        (kid, "ed25519", True),
        ("peer", "hmac", False),
    ]
    # A key file others can read is refused, in one line.
    os.chmod(peer, 0o644)
    proc = cli(None, "keys", "import", str(peer), "--kid", "other", env=env)
    assert proc.returncode == 2 and "chmod 600" in proc.stderr
    assert proc.stderr.count("\n") == 1
    os.chmod(key_path, 0o640)
    proc = cli(None, "keys", "list", env=env)
    assert proc.returncode == 2 and "chmod 600" in proc.stderr


def test_init_command(tmp_path: Path) -> None:
    conf = tmp_path / "n1.conf"
    args = [
        "init",
        "--local",
        "--root",
        str(tmp_path / "share"),
        "--node",
        "n1",
        "--peers",
        "n2,n3",
        "--config",
        str(conf),
        "--key-dir",
        str(tmp_path / "keys"),
        "--state-dir",
        str(tmp_path / "state"),
    ]
    proc = cli(None, *args)
    assert proc.returncode == 0, proc.stderr
    kid = re.search(r"key (ed[0-9a-f]{16}) \(created\)", proc.stdout)
    assert kid is not None
    assert (tmp_path / "keys" / "n1.ed25519").stat().st_mode & 0o777 == 0o600
    # The public half: printed with its fingerprint and the exact command for each peer,
    # pinned here as this node's own, published on the share.
    line = re.search(r"^public key: (dispatch-ed25519 \S+ n1)$", proc.stdout, re.M)
    assert line is not None
    assert re.search(r"^fingerprint: SHA256:[A-Za-z0-9+/]{43}$", proc.stdout, re.M)
    assert f"  echo '{line.group(1)}' | dispatch peers add n1 -" in proc.stdout
    assert "on each peer (n2, n3)" in proc.stdout
    assert line.group(1) in (tmp_path / "peers" / "n1.pub").read_text()
    assert (tmp_path / "share" / "nodes" / "n1.pub").read_text() == line.group(1) + "\n"
    for lane in ("n2-to-n1", "n3-to-n1", "n1-to-n2", "n1-to-n3"):
        assert (tmp_path / "share" / lane / "inbox").is_dir()
    status = json.loads(cli(None, "status", "--json", DISPATCH_CONFIG=str(conf)).stdout)
    assert status["node"] == "n1" and [p["node"] for p in status["peers"]] == ["n2", "n3"]
    other = cli(None, *[a if a != "n1" else "n9" for a in args])
    assert other.returncode == 2 and "--force" in other.stderr
    # The config may hold a webhook URL: not world-readable. The agent runs as the packages'
    # unprivileged user unless told otherwise (issue 12, finding 4).
    assert conf.stat().st_mode & 0o777 == 0o640
    assert "DISPATCH_RUN_AS=dispatch-agent" in conf.read_text()
    proc = cli(None, *args, "--force", "--run-as", "nobody")
    assert proc.returncode == 0, proc.stderr
    assert "DISPATCH_RUN_AS=nobody" in conf.read_text()
    assert conf.stat().st_mode & 0o777 == 0o640


def test_logs_falls_back_to_the_log_file(pair: Pair) -> None:
    task_id = json.loads(
        cli(pair.sender, "send", "--to", "gpubox", "--request", "talk", "--json").stdout
    )["id"]
    drain(pair.receiver.node())
    assert result_json(lane_in(pair), task_id)["status"] == "ok"
    proc = cli(pair.sender, "logs", task_id)
    assert proc.returncode == 0, proc.stderr
    assert "fake agent (acceptEdits) did: talk" in proc.stdout


def test_wait_on_a_rejected_task_does_not_hang_on_a_planted_fifo(pair: Pair) -> None:
    """Whoever can write the share can plant anything in rejected/: `wait` reads it without
    blocking (a FIFO opened for reading would wait for a writer forever)."""
    lane = lane_in(pair)
    task_id = new_id()
    pair.sender.node().sent.record(task_id, "devbox", "gpubox")
    (lane.rejected / f"{task_id}.json").write_text("{}")
    os.mkfifo(lane.rejected / f"{task_id}.json.reason.json")
    began = time.monotonic()
    proc = cli(pair.sender, "wait", task_id, "--timeout", "2", timeout=30)
    assert time.monotonic() - began < 15
    # An unsigned file in rejected/ is a hint, never the outcome: reported, waited past.
    assert proc.returncode == 4 and "rejected" in proc.stderr and "unsigned" in proc.stderr
    assert proc.stderr.count("\n") == 2


def test_status_does_not_hang_on_a_planted_heartbeat_fifo(pair: Pair) -> None:
    os.mkfifo(pair.root / "heartbeats" / "devbox.json")
    proc = cli(pair.receiver, "status", "--json", timeout=30)
    assert proc.returncode == 0, proc.stderr
    (peer,) = json.loads(proc.stdout)["peers"]
    assert peer["heartbeat_age_s"] is None and peer["stale"] is True


def test_lazy_command_table_matches_the_command_modules() -> None:
    """Every command a module of dispatch.commands defines is reachable by name, and
    nothing else is listed."""
    import importlib
    import pkgutil

    import dispatch.commands
    from dispatch.cli import COMMAND_MODULES, all_commands

    defined = {}
    for info in pkgutil.iter_modules(dispatch.commands.__path__):
        module = importlib.import_module(f"dispatch.commands.{info.name}")
        if info.name == "compat":
            continue  # dispatch-send / dispatch-ack, entry points of their own
        for command in getattr(module, "COMMANDS", []):
            defined[command.name] = info.name
    assert defined == COMMAND_MODULES
    assert set(all_commands()) == set(COMMAND_MODULES)


def test_promote_and_exec_do_not_import_unrelated_commands() -> None:
    code = (
        "import sys; from dispatch.cli import root; import click; "
        "ctx = click.Context(root); root.get_command(ctx, 'exec'); "
        "print(sorted(m for m in sys.modules if m.startswith('dispatch.commands.')))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    assert "dispatch.commands.mcp" not in out and "dispatch.commands.demo" not in out
    assert "dispatch.commands.runtime" in out


def test_status_with_the_root_unreachable_says_so_and_fails(pair: Pair, tmp_path: Path) -> None:
    ok = cli(pair.sender, "status", "--json")
    assert ok.returncode == 0 and json.loads(ok.stdout)["root_problem"] is None
    # The share not mounted: the root is missing, or an empty mount point.
    gone = cli(pair.sender, "status", DISPATCH_ROOT=str(tmp_path / "not-mounted"))
    assert gone.returncode == 1
    assert (
        "the shared root is unreachable" in gone.stderr and "is the share mounted?" in gone.stderr
    )
    empty = tmp_path / "empty-mountpoint"
    empty.mkdir()
    proc = cli(pair.sender, "status", "--json", DISPATCH_ROOT=str(empty))
    assert proc.returncode == 1
    problem = json.loads(proc.stdout)["root_problem"]
    assert problem.startswith(f"lane {empty}/") and "dispatch init" in problem


def test_colour_follows_color_and_no_color(pair: Pair) -> None:
    red_or_green = re.compile(r"\x1b\[(3[12]|1)m")
    assert not red_or_green.search(cli(pair.sender, "status").stdout)  # not a terminal
    forced = cli(pair.sender, "--color=always", "status").stdout
    assert red_or_green.search(forced) and "killswitch \x1b[32m" in forced
    assert not red_or_green.search(cli(pair.sender, "--color=never", "status").stdout)
    # NO_COLOR wins over the terminal check, not over an explicit --color=always.
    assert not red_or_green.search(cli(pair.sender, "status", NO_COLOR="1").stdout)
    assert red_or_green.search(cli(pair.sender, "--color=always", "status", NO_COLOR="1").stdout)


def test_init_refuses_a_root_on_the_root_filesystem_unless_local(tmp_path: Path) -> None:
    """An unmounted share looks like a directory on /: init must not quietly build the tree
    there. (tmp_path is on the root filesystem here; skip where it is not.)"""
    if os.stat(tmp_path).st_dev != os.stat("/").st_dev:
        pytest.skip("tmp_path is not on the root filesystem here, so there is nothing to refuse")
    share = tmp_path / "mnt" / "nfs" / "dispatch"
    args = ["init", "--root", str(share), "--node", "n1", "--peers", "n2"]
    args += ["--config", str(tmp_path / "n1.conf"), "--key-dir", str(tmp_path / "keys")]
    args += ["--state-dir", str(tmp_path / "state")]
    proc = cli(None, *args)
    assert proc.returncode == 2 and "on the same filesystem as /" in proc.stderr
    assert "is the share mounted there?" in proc.stderr and "--local" in proc.stderr
    assert not share.exists() and not (tmp_path / "n1.conf").exists()
    assert cli(None, *args, "--local").returncode == 0 and share.is_dir()


def test_init_enable_without_systemd_says_what_to_run(tmp_path: Path) -> None:
    if Path("/run/systemd/system").is_dir():
        pytest.skip("systemd runs here: --enable would enable this machine's units")
    args = ["init", "--local", "--root", str(tmp_path / "share"), "--node", "n1"]
    args += ["--peers", "n2", "--config", str(tmp_path / "n1.conf")]
    args += ["--key-dir", str(tmp_path / "keys"), "--state-dir", str(tmp_path / "state")]
    plain = cli(None, *args)
    assert plain.returncode == 0, plain.stderr
    assert "  dispatch watch   # no systemd here" in plain.stdout
    assert plain.stdout.rstrip().endswith(
        "dispatch doctor   # every line pass once each peer is set up too"
    )
    proc = cli(None, *args, "--enable")
    assert proc.returncode == 2 and "systemd is not running here" in proc.stderr
    assert "dispatch watch" in proc.stderr and (tmp_path / "n1.conf").exists()
