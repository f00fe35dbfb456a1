"""Configuration: defaults, file then environment, every problem reported at once."""

from __future__ import annotations

from pathlib import Path

import pytest

from dispatch.core import config as config_mod
from dispatch.core.config import (
    AgentProfile,
    DangerousPolicy,
    LauncherKind,
    WatchMode,
)
from dispatch.core.errors import ConfigError
from dispatch.core.knobs import valid_node


def conf(tmp_path: Path, text: str = "") -> Path:
    path = tmp_path / "dispatch.conf"
    path.write_text(text)
    return path


def load(path: Path, **env: str) -> config_mod.Config:
    return config_mod.load({"DISPATCH_CONFIG": str(path), **env})


def problems(path: Path, **env: str) -> str:
    with pytest.raises(ConfigError) as info:
        load(path, **env)
    return str(info.value)


def test_defaults(tmp_path: Path) -> None:
    cfg = load(conf(tmp_path), DISPATCH_ROOT="/srv/share")
    assert cfg.root == Path("/srv/share")
    assert (cfg.node_a, cfg.node_b) == ("a", "b")
    assert cfg.node == "" and cfg.peers == ()
    assert cfg.key_dir == Path("/etc/dispatch/keys")
    assert cfg.state_dir == Path("/var/lib/dispatch")
    assert cfg.poll_sec == 3.0
    assert cfg.max_parallel == 2
    assert cfg.agent_bin == "claude"
    assert cfg.agent_profile is AgentProfile.CLAUDE
    assert cfg.accept_v2 is False
    assert cfg.dangerous is DangerousPolicy.ACK
    assert cfg.timeout_max_s == 3600
    assert (cfg.max_age_s, cfg.clock_skew_s) == (86400, 300)
    assert (cfg.memory_max, cfg.tasks_max, cfg.cpu_quota) == ("4G", 512, "200%")
    assert cfg.max_hops == 3
    expected = LauncherKind.SYSTEMD if config_mod.systemd_is_pid1() else LauncherKind.PROCESS
    assert cfg.launcher is expected


def test_file_values_and_environment_overrides(tmp_path: Path) -> None:
    path = conf(
        tmp_path,
        "# comment\n; also a comment\n\nDISPATCH_ROOT=/srv/a\n"
        "DISPATCH_MAX_PARALLEL=4\nDISPATCH_POLL_SEC='1.5'\n"
        'DISPATCH_AGENT_BIN="python3 -m dispatch.ops.fake_agent"\n'
        "DISPATCH_ACCEPT_V2=yes\nDISPATCH_LAUNCHER=systemd\n",
    )
    cfg = load(path, DISPATCH_MAX_PARALLEL="5", DISPATCH_ROOT="/srv/b")
    assert cfg.max_parallel == 5  # environment wins
    assert cfg.root == Path("/srv/b")
    assert cfg.poll_sec == 1.5  # from the file, quotes removed
    assert cfg.agent_bin == "python3 -m dispatch.ops.fake_agent"
    assert cfg.accept_v2 is True
    assert cfg.launcher is LauncherKind.SYSTEMD
    assert cfg.config_path == path


def test_every_problem_is_reported_at_once_with_key_and_place(tmp_path: Path) -> None:
    path = conf(
        tmp_path,
        "DISPATCH_MAX_PARALLEL=0\nDISPATCH_BOGUS=1\n"
        "DISPATCH_MEMORY_MAX=lots\nDISPATCH_KEY_DIR=relative/keys\n",
    )
    text = problems(path, DISPATCH_POLL_SEC="abc", DISPATCH_DANGEROUS="maybe")
    assert f"DISPATCH_MAX_PARALLEL: must be at least 1, got 0 ({path})" in text
    assert f"DISPATCH_BOGUS: unknown setting ({path})" in text
    assert "DISPATCH_MEMORY_MAX" in text and text.count(str(path)) >= 4
    assert "DISPATCH_KEY_DIR: must be an absolute path" in text
    assert "DISPATCH_POLL_SEC" in text and "(environment)" in text
    assert "DISPATCH_DANGEROUS: must be one of allow, ack, deny" in text
    assert "DISPATCH_ROOT: required" in text
    assert "\n" not in text  # one line


def test_unknown_key_in_file_is_an_error_but_not_in_environment(tmp_path: Path) -> None:
    path = conf(tmp_path, "DISPATCH_ROOT=/srv\nDISPATCH_NOPE=1\n")
    assert f"DISPATCH_NOPE: unknown setting ({path})" in problems(path)
    # The environment holds unrelated DISPATCH_ variables (tests, wrappers): tolerated.
    cfg = load(conf(tmp_path, "DISPATCH_ROOT=/srv\n"), DISPATCH_SOMETHING_ELSE="x")
    assert cfg.root == Path("/srv")


@pytest.mark.parametrize("value", ["0", "-1", "nan", "inf", "x"])
def test_poll_sec_must_be_a_positive_finite_number(tmp_path: Path, value: str) -> None:
    assert "DISPATCH_POLL_SEC" in problems(
        conf(tmp_path), DISPATCH_ROOT="/r", DISPATCH_POLL_SEC=value
    )


@pytest.mark.parametrize("value", ["49", "10001", "0", "-5", "2.5", "fast"])
def test_sensor_ms_is_a_whole_number_of_milliseconds_in_range(tmp_path: Path, value: str) -> None:
    assert "DISPATCH_SENSOR_MS" in problems(
        conf(tmp_path), DISPATCH_ROOT="/r", DISPATCH_SENSOR_MS=value
    )


def test_watch_mode_and_sensor_period(tmp_path: Path) -> None:
    cfg = load(
        conf(tmp_path, "DISPATCH_WATCH_MODE=timer\nDISPATCH_SENSOR_MS=50\n"), DISPATCH_ROOT="/r"
    )
    assert (cfg.watch_mode, cfg.sensor_ms) == (WatchMode.TIMER, 50)
    defaults = load(conf(tmp_path), DISPATCH_ROOT="/r")
    assert (defaults.watch_mode, defaults.sensor_ms) == (WatchMode.AUTO, 250)
    local = load(conf(tmp_path, "DISPATCH_WATCH_MODE=inotify\n"), DISPATCH_ROOT="/r")
    assert local.watch_mode is WatchMode.INOTIFY
    text = problems(conf(tmp_path), DISPATCH_ROOT="/r", DISPATCH_WATCH_MODE="fanotify")
    assert "DISPATCH_WATCH_MODE: must be one of auto, sensor, timer, inotify" in text


def test_bad_lines_and_missing_config(tmp_path: Path) -> None:
    path = conf(tmp_path, "DISPATCH_ROOT=/srv\nthis is not an assignment\n")
    with pytest.raises(ConfigError, match=r"dispatch.conf:2: not a KEY=VALUE line"):
        load(path)
    with pytest.raises(ConfigError, match="does not exist"):
        config_mod.load({"DISPATCH_CONFIG": str(tmp_path / "missing.conf")})


def test_root_is_required_unless_not_needed(tmp_path: Path) -> None:
    assert "DISPATCH_ROOT: required" in problems(conf(tmp_path))
    cfg = config_mod.load({"DISPATCH_CONFIG": str(conf(tmp_path))}, need_root=False)
    assert cfg.node == ""


@pytest.mark.parametrize(
    ("env", "node"),
    [
        ({"DISPATCH_SIDE": "gpubox"}, "gpubox"),
        ({"DISPATCH_FROM": "devbox"}, "devbox"),
        ({"DISPATCH_SIDE": "gpubox", "DISPATCH_FROM": "devbox"}, "gpubox"),
        ({"DISPATCH_NODE": "third", "DISPATCH_SIDE": "gpubox", "DISPATCH_FROM": "devbox"}, "third"),
        ({"DISPATCH_NODE": "", "DISPATCH_SIDE": "", "DISPATCH_FROM": "devbox"}, "devbox"),
    ],
)
def test_node_falls_back_to_side_then_from(tmp_path: Path, env: dict[str, str], node: str) -> None:
    cfg = load(conf(tmp_path), DISPATCH_ROOT="/r", **env)
    assert cfg.node == node


def test_peers_from_node_a_b(tmp_path: Path) -> None:
    base = {"DISPATCH_ROOT": "/r", "DISPATCH_NODE_A": "devbox", "DISPATCH_NODE_B": "gpubox"}
    assert load(conf(tmp_path), DISPATCH_FROM="devbox", **base).peers == ("gpubox",)
    assert load(conf(tmp_path), DISPATCH_SIDE="gpubox", **base).peers == ("devbox",)
    cfg = load(conf(tmp_path), DISPATCH_SIDE="gpubox", **base)
    assert cfg.lanes_in() == [("devbox", "gpubox")]
    assert cfg.lanes_out() == [("gpubox", "devbox")]
    # A node that is neither A nor B, without DISPATCH_PEERS, has no peers.
    assert load(conf(tmp_path), DISPATCH_NODE="other", **base).peers == ()
    # The original's default names.
    assert load(conf(tmp_path), DISPATCH_ROOT="/r", DISPATCH_SIDE="a").peers == ("b",)


def test_peers_list_wins_over_node_a_b(tmp_path: Path) -> None:
    cfg = load(
        conf(tmp_path),
        DISPATCH_ROOT="/r",
        DISPATCH_NODE="hub",
        DISPATCH_NODE_A="hub",
        DISPATCH_NODE_B="gpubox",
        DISPATCH_PEERS="w1, w2,w3",
    )
    assert cfg.peers == ("w1", "w2", "w3")
    assert cfg.lanes_in() == [("w1", "hub"), ("w2", "hub"), ("w3", "hub")]


def test_peer_list_problems(tmp_path: Path) -> None:
    text = problems(
        conf(tmp_path), DISPATCH_ROOT="/r", DISPATCH_NODE="hub", DISPATCH_PEERS="hub,Bad Name,w1,w1"
    )
    assert "lists this node 'hub' itself" in text
    assert "not a valid node name: 'Bad Name'" in text
    assert "a peer is listed twice" in text


def test_invalid_node_names(tmp_path: Path) -> None:
    text = problems(
        conf(tmp_path), DISPATCH_ROOT="/r", DISPATCH_NODE="GPU box", DISPATCH_NODE_A="-x"
    )
    assert "DISPATCH_NODE: not a valid node name" in text
    assert "DISPATCH_NODE_A: not a valid node name" in text


@pytest.mark.parametrize(
    ("name", "ok"),
    [
        ("a", True),
        ("gpu-box_1.lan", True),
        ("0", True),
        ("a" * 63, True),
        ("a" * 64, False),
        ("", False),
        ("A", False),
        ("-a", False),
        (".a", False),
        ("a/b", False),
        ("a b", False),
        ("ä", False),
    ],
)
def test_valid_node(name: str, ok: bool) -> None:
    assert valid_node(name) is ok


def test_render_round_trips_and_refuses_newlines(tmp_path: Path) -> None:
    values = {
        "DISPATCH_ROOT": "/srv/share dir",
        "DISPATCH_NODE": "devbox",
        "DISPATCH_AGENT_BIN": "python3 -m x",
    }
    path = tmp_path / "c.conf"
    path.write_text(config_mod.render(values))
    assert config_mod.parse_env_file(path) == values
    with pytest.raises(ConfigError):
        config_mod.render({"DISPATCH_RUN_AS": "a\nDISPATCH_DANGEROUS=allow"})


def test_a_mistyped_knob_gets_the_nearest_name(tmp_path: Path) -> None:
    path = conf(tmp_path, "DISPATCH_ROOT=/srv\nDISPATCH_MAX_PARALEL=4\n")
    assert (
        f"DISPATCH_MAX_PARALEL: unknown setting ({path}); did you mean DISPATCH_MAX_PARALLEL?"
        in problems(path)
    )
    path = conf(tmp_path, "DISPATCH_ROOT=/srv\nNOT_OURS_AT_ALL=4\n")
    assert "did you mean" not in problems(path)


def test_values_say_what_they_must_look_like(tmp_path: Path) -> None:
    text = problems(
        conf(tmp_path),
        DISPATCH_ROOT="/r",
        DISPATCH_POLL_SEC="3s",
        DISPATCH_MAX_PARALLEL="two",
        DISPATCH_STALL_S="10m",
    )
    assert (
        "DISPATCH_POLL_SEC: must be a number of seconds such as 3 or 0.5 (no unit), got '3s'"
        in text
    )
    assert (
        "DISPATCH_MAX_PARALLEL: must be a whole number of at least 1 (no unit), got 'two'" in text
    )
    assert "DISPATCH_STALL_S: must be a whole number of at least 0 (no unit), got '10m'" in text
    assert "could not convert" not in text and "invalid literal" not in text
