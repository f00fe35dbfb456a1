"""dispatch under a real systemd: path activation, the cap, limits, timeouts, killswitch,
reboot recovery, the agent's sandbox, a wedge-proof path unit, and the journal."""

from __future__ import annotations

import json
import threading
import time

from tests.integration.dispatch_host import AGENT_USER, DISPATCH, ROOT, DispatchHost
from tests.integration.sdhost import SystemdHost

LANE = f"{ROOT}/devbox-to-gpubox"


def test_round_trip_by_path_activation_alone(node_host: SystemdHost) -> None:
    d = DispatchHost(node_host)
    d.setup(timer=False)
    assert d.unit_state("dispatch-watch.timer")[0] == "inactive"
    task_id = d.send("say hello")
    result = d.wait(task_id, timeout=60)
    assert result["status"] == "ok", json.dumps(result)
    assert result["final_text"].startswith("fake agent (acceptEdits) did: say hello")
    assert result["unit"] == f"dispatch-exec@{task_id}.service"
    runs = d.agent_runs()
    assert [r["task_id"] for r in runs] == [task_id]
    # The agent ran as the unprivileged user, not as root.
    nobody_uid = int(d.shell(f"id -u {AGENT_USER}"))
    assert runs[0]["uid"] == nobody_uid
    # The unit's journal tells the story, agent output included...
    unit_log = node_host.journalctl("-u", "dispatch-exec@*", "-o", "cat")
    assert "agent starting: say hello" in unit_log
    assert '"type": "result"' in unit_log
    # ...and so does the task's own field, from promote and exec alike.
    story = node_host.journalctl(f"DISPATCH_TASK_ID={task_id}", "-o", "json")
    events = {json.loads(line).get("DISPATCH_EVENT") for line in story.splitlines()}
    assert {"task_queued", "exec_launched", "exec_start", "exec_end"} <= events
    # `dispatch logs` reads the same journal.
    logs = d.dispatch("logs", task_id, sender=False).stdout
    assert "exec_end" in logs or "ok exit=0" in logs


def test_cap_two_with_ten_tasks_refills_without_timer(node_host: SystemdHost) -> None:
    d = DispatchHost(node_host)
    d.setup(timer=False, settings={"DISPATCH_MAX_PARALLEL": "2"})
    # Queue all ten while the killswitch holds them, so the cap is really tested.
    d.dispatch("killswitch", "on", "--reason", "loading", sender=False)
    ids = [d.send(f"task {i} sleep=1") for i in range(10)]
    d.wait_until("ten queued", lambda: len(d.lane_files("processing")) == 10)
    samples: list[int] = []
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            samples.append(len(d.busy_exec_units()))

    sampler = threading.Thread(target=sample)
    sampler.start()
    try:
        d.dispatch("killswitch", "off", sender=False)
        # a local nudge, since no timer runs here
        node_host.run(["sh", "-c", "mkdir -p /run/dispatch && touch /run/dispatch/kick"])
        results = [d.wait(task_id, timeout=120) for task_id in ids]
    finally:
        stop.set()
        sampler.join()
    assert all(r["status"] == "ok" for r in results), [r["status"] for r in results]
    assert len(samples) > 20
    assert max(samples) <= 2, samples
    assert max(samples) == 2  # the cap was reached, so it was really what held them back
    assert sorted(r["task_id"] for r in d.agent_runs()) == sorted(ids)
    assert d.unit_state("dispatch-watch.timer")[0] == "inactive"


def test_memory_limit_kills_the_agent(node_host: SystemdHost) -> None:
    d = DispatchHost(node_host)
    d.setup(settings={"DISPATCH_MEMORY_MAX": "150M"})
    result = d.wait(d.send("eat mem=400"), timeout=60)
    assert result["status"] == "killed"
    assert "SIGKILL" in result["reason"] and "memory" in result["reason"], result["reason"]


def test_executor_timeout_on_a_silent_agent(node_host: SystemdHost) -> None:
    d = DispatchHost(node_host)
    d.setup()
    result = d.wait(d.send("be silent hang=120", "--timeout", "2"), timeout=60)
    assert result["status"] == "timeout"
    assert result["exit_code"] == 124
    assert result["elapsed_s"] < 60


def test_runtime_max_sec_ceiling(node_host: SystemdHost) -> None:
    d = DispatchHost(node_host)
    # A ceiling below the task's own timeout: systemd's RuntimeMaxSec= ends it.
    d.setup(exec_dropin="RuntimeMaxSec=3\nEnvironment=DISPATCH_RUNTIME_MAX_S=3\n")
    task_id = d.send("be silent hang=120", "--timeout", "100")
    result = d.wait(task_id, timeout=60)
    assert result["status"] == "timeout"
    assert "RuntimeMaxSec" in result["reason"], result["reason"]
    unit_log = node_host.journalctl("-u", f"dispatch-exec@{task_id}.service", "-o", "cat")
    assert "Service reached runtime time limit" in unit_log or "timeout" in unit_log


def test_killswitch_soft_then_hard(node_host: SystemdHost) -> None:
    d = DispatchHost(node_host)
    d.setup(timer=True)
    d.dispatch("killswitch", "on", "--reason", "maintenance", sender=False)
    held = d.send("held back")
    d.wait_until("held task queued", lambda: d.lane_files("processing") == [f"{held}.json"])
    time.sleep(2.5)  # two timer periods: still nothing may start
    assert d.agent_runs() == []
    assert d.busy_exec_units() == []
    d.dispatch("killswitch", "off", sender=False)
    assert d.wait(held)["status"] == "ok"

    long_id = d.send("long job sleep=120", "--timeout", "600")
    d.wait_until("long job running", lambda: any(r["task_id"] == long_id for r in d.agent_runs()))
    d.dispatch("killswitch", "on", "--hard", "--reason", "incident 7", sender=False)
    result = d.wait(long_id, timeout=60)
    assert result["status"] == "killed"
    assert "hard KILLSWITCH" in result["reason"] and "incident 7" in result["reason"]
    d.wait_until("no exec unit left", lambda: d.busy_exec_units() == [])


def test_reboot_recovery(node_host: SystemdHost) -> None:
    d = DispatchHost(node_host)
    d.setup(timer=True, settings={"DISPATCH_MAX_PARALLEL": "1"})
    running = d.send("long job sleep=300", "--timeout", "600")
    d.wait_until("long job running", lambda: any(r["task_id"] == running for r in d.agent_runs()))
    queued = d.send("queued job")
    pending = d.send("needs an ack", "--require-ack")
    d.wait_until(
        "staged",
        lambda: (
            f"{queued}.json" in d.lane_files("processing")
            and f"{pending}.json" in d.lane_files("pending-ack")
        ),
    )
    node_host.reboot()
    # /run is fresh after a reboot: units and the generator are installed again, as a
    # package would have them on disk.
    from tests.integration.dispatch_host import install_units

    install_units(
        node_host,
        f"[Service]\nEnvironment=DISPATCH_FAKE_AGENT_LOG="
        f"{ROOT.rsplit('/', 1)[0]}/agent-runs.jsonl\n",
    )
    node_host.daemon_reload()
    node_host.systemctl("start", "dispatch-watch.path", "dispatch-watch.timer")
    interrupted = d.wait(running, timeout=60)
    assert interrupted["status"] == "interrupted"
    assert d.wait(queued, timeout=60)["status"] == "ok"
    time.sleep(2)
    assert f"{pending}.json" in d.lane_files("pending-ack")
    runs = [r["task_id"] for r in d.agent_runs()]
    assert runs.count(running) == 1 and runs.count(queued) == 1 and pending not in runs


def test_agent_cannot_read_keys_or_state(node_host: SystemdHost) -> None:
    d = DispatchHost(node_host)
    d.setup()
    key = "/etc/dispatch/keys/gpubox.ed25519"
    r1 = d.wait(d.send(f"steal read={key}"))
    r2 = d.wait(d.send("steal read=/var/lib/dispatch/history.jsonl"))
    for result, path in ((r1, key), (r2, "/var/lib/dispatch/history.jsonl")):
        assert result["status"] == "ok"  # and `wait` verified its signature
        assert f"read {path}: denied" in result["final_text"], result["final_text"]


def test_path_unit_survives_junk_and_keeps_flowing(node_host: SystemdHost) -> None:
    d = DispatchHost(node_host)
    d.setup(timer=False)
    inbox = f"{LANE}/inbox"
    d.shell(
        f"set -e; cd {inbox}; "
        "printf '{{' > stale.json.tmp; touch -d '3 hours ago' stale.json.tmp; "
        "printf 'not json' > garbage.json; "
        "mkfifo pipe.json; mkdir dir.json; ln -s /etc/shadow shadow.json; "
        "printf '{}' > locked.json; chattr +i locked.json"
    )
    try:
        good = d.send("after the junk")
        assert d.wait(good, timeout=60)["status"] == "ok"
        rejected = d.lane_files("rejected")
        for name in ("garbage.json", "pipe.json", "dir.json", "shadow.json", "stale.json.tmp"):
            assert name in rejected and f"{name}.reason.json" in rejected, (name, rejected)
        assert d.lane_files("inbox") == ["locked.json"]  # cannot be moved: stays, logged
        # A local root: the path unit also watches the inbox level-triggered, so a promoter
        # leaving now would be started again at once, pass after pass. It stays instead,
        # one process (its stay past the 3 s linger is the entry's), and does not spin.
        promoter = node_host.unit_property("dispatch-watch.service", "InvocationID")
        time.sleep(5)
        assert node_host.unit_property("dispatch-watch.service", "InvocationID") == promoter
        assert d.unit_state("dispatch-watch.service")[0] == "activating"
        assert node_host.unit_property("dispatch-watch.service", "NRestarts") == "0"
        assert d.wait(d.send("and another"), timeout=60)["status"] == "ok"
        assert node_host.unit_property("dispatch-watch.service", "InvocationID") == promoter
        assert node_host.unit_property("dispatch-watch.path", "Result") == "success"
        story = node_host.journalctl("-u", "dispatch-watch.service", "-o", "cat")
        assert "locked.json" in story  # the entry it could not move is in the journal
    finally:
        d.shell(f"chattr -i {inbox}/locked.json")


def test_a_task_that_lands_while_systemd_is_not_watching_starts_when_it_does(
    node_host: SystemdHost,
) -> None:
    """systemd watches the inboxes only while no pass runs: a task that lands between a
    pass's last look and its exit (here, with the path unit stopped: the same) is seen as
    soon as the path unit watches again, not at the sweep (the timer is off here)."""
    d = DispatchHost(node_host)
    d.setup(timer=False)
    node_host.systemctl("stop", "dispatch-watch.path")
    task_id = d.send("landed unwatched")
    time.sleep(1)
    assert d.lane_files("inbox") == [f"{task_id}.json"]
    node_host.systemctl("start", "dispatch-watch.path")
    assert d.wait(task_id, timeout=30)["status"] == "ok"
    assert node_host.unit_property("dispatch-watch.timer", "ActiveState") == "inactive"


def test_a_failing_pass_does_not_spin_on_what_waits_in_an_inbox(node_host: SystemdHost) -> None:
    """On a local root a pass that exits leaves the path unit to look into the inboxes again
    (DirectoryNotEmpty=). A pass that fails (a config broken without a daemon-reload) while
    one holds something it cannot take would be started again at once, pass after failing
    pass: it waits before it exits, so the node tries twice a minute."""
    d = DispatchHost(node_host)
    d.setup(timer=False)
    d.shell(f"printf '{{' > {LANE}/inbox/unfinished.json.tmp")  # a sender mid-write
    assert d.wait(d.send("before the break"), timeout=60)["status"] == "ok"
    unit = "dispatch-watch.service"
    # A key the unit's environment does not hold yet: the file's value is the one read.
    node_host.run(["sh", "-c", "echo DISPATCH_TASKS_MAX=lots >> /etc/dispatch/dispatch.conf"])
    d.shell("touch /run/dispatch/kick")  # the staying promoter's next round reads the config
    d.wait_until(
        "the pass failed",
        lambda: "DISPATCH_TASKS_MAX" in node_host.journalctl("-u", unit, "-o", "cat"),
        timeout=10,
    )
    starts = node_host.journalctl("-u", unit, "-o", "cat").count("Starting dispatch-watch")
    time.sleep(8)
    again = node_host.journalctl("-u", unit, "-o", "cat").count("Starting dispatch-watch")
    assert again - starts <= 1, again - starts
    assert node_host.unit_property(unit, "NRestarts") == "0"


def test_exec_killed_outright_is_answered_interrupted(node_host: SystemdHost) -> None:
    d = DispatchHost(node_host)
    d.setup(timer=True)
    task_id = d.send("long job sleep=300", "--timeout", "600")
    unit = f"dispatch-exec@{task_id}.service"
    d.wait_until("running", lambda: any(r["task_id"] == task_id for r in d.agent_runs()))
    node_host.systemctl("kill", "--signal=SIGKILL", unit)
    result = d.wait(task_id, timeout=60)
    assert result["status"] == "interrupted"
    assert [r["task_id"] for r in d.agent_runs()].count(task_id) == 1


def test_a_local_disk_root_runs_on_inotify_alone(node_host: SystemdHost) -> None:
    """auto on a local disk: no sensor, the timer only sweeps (1 min), and still nothing
    waits for it: tasks start from the path unit, and an execution killed outright is
    answered at once (its unit's ExecStopPost= kick), with the timer not even running."""
    d = DispatchHost(node_host)
    d.setup(timer=False)
    doctor = json.loads(d.dispatch("doctor", "--json", sender=False, check=False).stdout)
    [mode] = [c for c in doctor if c["check"] == "watch-mode"]
    assert mode["ok"] and mode["detail"].startswith("inotify (DISPATCH_WATCH_MODE=auto)"), mode
    sweep = node_host.unit_property("dispatch-watch.timer", "TimersMonotonic")
    assert "OnUnitActiveUSec=1min" in sweep, sweep
    assert d.wait(d.send("on inotify alone"), timeout=60)["status"] == "ok"
    task_id = d.send("long job sleep=300", "--timeout", "600")
    d.wait_until("running", lambda: any(r["task_id"] == task_id for r in d.agent_runs()))
    node_host.systemctl("kill", "--signal=SIGKILL", f"dispatch-exec@{task_id}.service")
    assert d.wait(task_id, timeout=30)["status"] == "interrupted"
    assert node_host.unit_property("dispatch-watch.timer", "ActiveState") == "inactive"


def test_a_promoter_killed_outright_is_started_again(node_host: SystemdHost) -> None:
    """A pass SIGKILLed (the OOM killer, say) may have taken its kick and left work half
    seen; with the timer a minute away (or not running, as here) systemd starts it again."""
    d = DispatchHost(node_host)
    d.setup(timer=False, settings={"DISPATCH_PROMOTE_LINGER_S": "60"})
    assert d.wait(d.send("before the kill"), timeout=60)["status"] == "ok"
    unit = "dispatch-watch.service"
    killed = node_host.unit_property(unit, "InvocationID")
    assert node_host.unit_property(unit, "ActiveState") == "activating"  # staying a while
    node_host.systemctl("kill", "--signal=SIGKILL", unit)
    d.wait_until(
        "started again",
        lambda: node_host.unit_property(unit, "InvocationID") not in ("", killed),
    )
    assert node_host.unit_property(unit, "NRestarts") == "1"
    # That pass finds nothing to do, and ends; the path unit watches again.
    d.wait_until("the new pass done", lambda: d.unit_state(unit) == ("inactive", "dead"))
    assert node_host.unit_property(unit, "Result") == "success"
    assert d.wait(d.send("after the kill"), timeout=60)["status"] == "ok"
    assert node_host.unit_property("dispatch-watch.timer", "ActiveState") == "inactive"


def test_the_lingering_promoter_takes_pin_and_config_changes_at_once(
    node_host: SystemdHost,
) -> None:
    """The promoter stays after a busy pass; what the operator changes meanwhile counts at
    its next pass, as it would for a new process: a peer whose pin was removed is refused
    while the same promoter still runs."""
    d = DispatchHost(node_host)
    d.setup(timer=False, settings={"DISPATCH_PROMOTE_LINGER_S": "60"})
    assert d.wait(d.send("first"), timeout=60)["status"] == "ok"
    promoter = node_host.unit_property("dispatch-watch.service", "InvocationID")
    assert node_host.unit_property("dispatch-watch.service", "ActiveState") == "activating"
    d.dispatch("peers", "remove", "devbox", sender=False)
    refused = d.send("after the pin went")
    # Unauthenticated now, so answered with no signed result: quarantined with its reason.
    d.wait_until("refused", lambda: f"{refused}.json.reason.json" in d.lane_files("rejected"))
    reason = d.shell(f"cat {LANE}/rejected/{refused}.json.reason.json")
    assert "unknown_key" in reason, reason
    # A config change counts at its next pass too: dangerous tasks refused from now on.
    node_host.run(["sh", "-c", "echo DISPATCH_DANGEROUS=deny >> /etc/dispatch/dispatch.conf"])
    line = d.dispatch("keys", "show").stdout.splitlines()[0]  # devbox's, as the README pins it
    node_host.run([DISPATCH, "peers", "add", "devbox", "-"], input=line + "\n")
    denied = d.wait(d.send("now dangerous", "--dangerous"), timeout=60)
    assert denied["status"] == "rejected" and "dangerous_denied" in denied["reason"], denied
    # The same process refused both: no new pass was started for them.
    assert node_host.unit_property("dispatch-watch.service", "InvocationID") == promoter
