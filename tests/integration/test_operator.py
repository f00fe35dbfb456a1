"""The operator's commands through the real units, under a real systemd: `status` (with the
running executions' units and memory), `wait` and its exit codes, `cancel` (queued and
running), `doctor`, webhook notifications from dispatch-notify.service, and the Prometheus
textfile from dispatch-heartbeat.service."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.integration.dispatch_host import MNT, ROOT, DispatchHost
from tests.integration.sdhost import SystemdHost

LANE = f"{ROOT}/devbox-to-gpubox"
STATUS_KEYS = {
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
EXEC_KEYS = {"id", "lane", "unit", "state", "started_at", "elapsed_s", "memory_bytes"}


def running(d: DispatchHost, task_id: str) -> bool:
    return any(r["task_id"] == task_id for r in d.agent_runs())


def test_status_shows_the_running_unit_and_cancel_stops_it(node_host: SystemdHost) -> None:
    d = DispatchHost(node_host)
    d.setup(timer=True)
    task_id = d.send("long job sleep=120 mem=40", "--timeout", "600")
    unit = f"dispatch-exec@{task_id}.service"
    d.wait_until("the agent running", lambda: running(d, task_id))
    d.sleep(1)  # the fake agent holds its 40 MiB before it sleeps

    proc = d.dispatch("status", "--json", sender=False)
    data = json.loads(proc.stdout)
    assert set(data) == STATUS_KEYS and data["node"] == "gpubox"
    [run] = data["executions"]
    assert set(run) == EXEC_KEYS
    assert (run["id"], run["lane"], run["unit"]) == (task_id, "devbox-to-gpubox", unit)
    assert run["state"] == "active (running)"
    # From the unit's cgroup: the agent's 40 MiB and the executor.
    assert isinstance(run["memory_bytes"], int) and run["memory_bytes"] > 40 * 1024 * 1024
    assert run["elapsed_s"] >= 1 and run["started_at"]
    lane = next(lane for lane in data["lanes"] if lane["direction"] == "in")
    assert lane["running"] == 1
    text = d.dispatch("status", sender=False).stdout
    assert f"  {task_id}  {unit}  devbox-to-gpubox  elapsed " in text
    print(f"$ dispatch status\n{text}")
    # The sender (another config on this same systemd) does not claim gpubox's unit.
    sender_view = json.loads(d.dispatch("status", "--json").stdout)
    assert sender_view["node"] == "devbox" and sender_view["executions"] == []

    waited = d.dispatch("wait", task_id, "--timeout", "0.5", check=False)
    assert waited.returncode == 4 and "(last seen: running)" in waited.stderr

    # Cancel, from the sender: the signed request travels the lane; the unit is stopped.
    proc = d.dispatch("cancel", task_id, "--wait", "--json", "--timeout", "60", timeout=90)
    out = json.loads(proc.stdout)
    assert proc.returncode == 0, proc.stderr
    assert out["requested"] is True and out["result"]["status"] == "cancelled"
    assert out["result"]["reason"].startswith("cancelled by devbox")
    assert out["result"]["unit"] == unit
    d.wait_until("the unit gone", lambda: d.busy_exec_units() == [])
    listed = node_host.run(
        ["systemctl", "list-units", "--all", "--plain", "--no-legend", unit]
    ).stdout
    assert listed.strip() == ""  # CollectMode=inactive-or-failed: nothing left behind
    assert [r["task_id"] for r in d.agent_runs()].count(task_id) == 1
    after = json.loads(d.dispatch("status", "--json", sender=False).stdout)
    assert after["executions"] == []
    # A finished task is left alone, with a message.
    again = d.dispatch("cancel", task_id)
    assert again.stdout.strip() == f"task {task_id} already finished (cancelled); left alone"


def test_wait_exit_codes(node_host: SystemdHost) -> None:
    d = DispatchHost(node_host)
    d.setup(timer=True)
    ok = d.send("say hello")
    proc = d.dispatch("wait", ok, "--timeout", "60", check=False, timeout=90)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("fake agent (acceptEdits) did: say hello")
    print(f"$ dispatch wait {ok}\n{proc.stdout}")
    as_json = d.dispatch("wait", ok, "--json", check=False)
    assert as_json.returncode == 0 and json.loads(as_json.stdout)["status"] == "ok"

    failed = d.send("break exit=3")
    proc = d.dispatch("wait", failed, "--timeout", "60", check=False, timeout=90)
    assert proc.returncode == 1
    assert f"task {failed} ended error: agent exited with status 3" in proc.stderr

    sent = d.dispatch(
        "send",
        "--to",
        "gpubox",
        "--request",
        "all at once",
        "--wait",
        "--wait-timeout",
        "60",
        check=False,
        timeout=90,
    )
    assert sent.returncode == 0 and "did: all at once" in sent.stdout

    d.dispatch("killswitch", "on", "--reason", "hold", sender=False)
    held = d.send("held back")
    proc = d.dispatch("wait", held, "--timeout", "2", check=False)
    assert proc.returncode == 4
    assert f"no result for {held} after 2s (last seen: queued)" in proc.stderr
    d.dispatch("killswitch", "off", sender=False)
    assert d.wait(held)["status"] == "ok"

    # A result changed on the share after it was signed: `result` exits 3, never with the
    # forged text; `wait` does not take it for the outcome and waits on (issue 12).
    d.shell(f"sed -i 's/fake agent/forged agent/' {LANE}/done/{ok}.result.json")
    proc = d.dispatch("result", ok, check=False)
    assert proc.returncode == 3, (proc.stdout, proc.stderr)
    assert proc.stdout == "" and "signature" in proc.stderr
    proc = d.dispatch("wait", ok, "--timeout", "1", check=False)
    assert proc.returncode == 4, (proc.stdout, proc.stderr)
    assert proc.stdout == "" and "signature" in proc.stderr and "ignored" in proc.stderr


def test_cancel_a_queued_task_held_by_the_killswitch(node_host: SystemdHost) -> None:
    d = DispatchHost(node_host)
    d.setup(timer=False)  # the path unit alone: it watches cancel/ too
    d.dispatch("killswitch", "on", "--reason", "hold", sender=False)
    task_id = d.send("never runs")
    d.wait_until("queued", lambda: d.lane_files("processing") == [f"{task_id}.json"])
    out = json.loads(d.dispatch("cancel", task_id, "--json").stdout)
    assert out["requested"] is True
    assert out["path"] == f"{LANE}/cancel/{task_id}.json"
    proc = d.dispatch("wait", task_id, "--json", "--timeout", "30", check=False, timeout=60)
    assert proc.returncode == 1, proc.stderr
    result = json.loads(proc.stdout)
    assert result["status"] == "cancelled" and result["exit_code"] == -1
    assert d.lane_files("processing") == [] and d.lane_files("cancel") == []
    d.dispatch("killswitch", "off", sender=False)
    node_host.run(["sh", "-c", "mkdir -p /run/dispatch && touch /run/dispatch/kick"])
    d.sleep(2)
    assert d.agent_runs() == [] and d.busy_exec_units() == []


def test_doctor_through_the_units(node_host: SystemdHost) -> None:
    d = DispatchHost(node_host)
    d.setup(timer=True)
    # Both identities' heartbeats: this host's timer, and the sender's as its timer would.
    node_host.systemctl("start", "dispatch-heartbeat.timer")
    d.dispatch("heartbeat")
    d.wait_until("gpubox's heartbeat", lambda: "gpubox.json" in d.shell(f"ls {ROOT}/heartbeats"))
    # The passes the timer started want the signer's socket: it listens from the first.
    d.wait_until(
        "the signer's socket",
        lambda: d.shell("systemctl is-active dispatch-signer.socket || true").strip() == "active",
    )
    proc = d.dispatch("doctor", sender=False, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    print(f"$ dispatch doctor\n{proc.stdout}")
    checks = json.loads(d.dispatch("doctor", "--json", sender=False).stdout)
    assert [c["check"] for c in checks] == [
        "config",
        "key",
        "root",
        "agent user",
        "filesystem",
        "peer devbox",
        "peer-key devbox",
        "dispatch-watch.path",
        "dispatch-signer.socket",
        "watch-mode",
        "killswitch",
    ]
    assert all(c["ok"] and set(c) == {"check", "ok", "detail", "hint"} for c in checks)
    by_name = {c["check"]: c for c in checks}
    assert "mode 0600" in by_name["key"]["detail"]
    # pinned with `dispatch peers add devbox -`
    assert "from stdin" in by_name["peer-key devbox"]["detail"]
    assert by_name["dispatch-watch.path"]["detail"] == "the path unit: active (waiting)"
    assert (
        by_name["dispatch-signer.socket"]["detail"]
        == "the local signer's socket: active (listening)"
    )
    # The sender's side of the same share: its peer gpubox beats too.
    sender_side = d.dispatch("doctor", check=False)
    assert sender_side.returncode == 0, sender_side.stdout + sender_side.stderr

    node_host.systemctl("stop", "dispatch-watch.path")
    proc = d.dispatch("doctor", sender=False, check=False)
    assert proc.returncode == 1
    [line] = [x for x in proc.stdout.splitlines() if x.startswith("FAIL")]
    assert "dispatch-watch.path" in line and "inactive (dead)" in line
    assert "hint: systemctl start dispatch-watch.path" in proc.stdout

    node_host.systemctl("start", "dispatch-watch.path")
    d.dispatch("killswitch", "on", "--reason", "doctor test", sender=False)
    proc = d.dispatch("doctor", "--json", sender=False, check=False)
    assert proc.returncode == 1
    assert [c["check"] for c in json.loads(proc.stdout) if not c["ok"]] == ["killswitch"]


class Hook:
    def __init__(self) -> None:
        self.bodies: list[tuple[str, dict[str, Any]]] = []
        self.lock = threading.Lock()
        self.url = ""

    def on(self, path: str) -> list[dict[str, Any]]:
        with self.lock:
            return [body for where, body in self.bodies if where == path]


@pytest.fixture
def hook() -> Iterator[Hook]:
    state = Hook()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", "0"))))
            with state.lock:
                state.bodies.append((self.path, body))
            self.send_response(204)
            self.end_headers()

        def log_message(self, format: str, *args: Any) -> None:
            pass

    # The namespace shares this machine's network (node_host has no network namespace).
    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    state.url = f"http://127.0.0.1:{server.server_address[1]}"
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield state
    finally:
        server.shutdown()
        server.server_close()


def test_notifications_through_the_notify_unit(node_host: SystemdHost, hook: Hook) -> None:
    d = DispatchHost(node_host)
    d.setup(
        timer=True,
        settings={
            "DISPATCH_DISCORD_WEBHOOK": f"{hook.url}/discord",
            "DISPATCH_WEBHOOK_URL": f"{hook.url}/json",
        },
    )
    task_id = d.send("ship it", "--require-ack", "--callback", "discord")
    d.wait_until("the pending-ack posts", lambda: len(hook.bodies) == 2)
    [discord] = hook.on("/discord")
    assert f"task `{task_id}` from devbox waits for an ack on gpubox" in discord["content"]
    assert hook.on("/json")[0]["event"] == "task_pending_ack"

    d.dispatch("ack", task_id, sender=False)
    assert d.wait(task_id)["status"] == "ok"
    d.wait_until("the end posts", lambda: len(hook.bodies) == 4)
    assert "ended **ok**" in hook.on("/discord")[1]["content"]
    end = hook.on("/json")[1]
    assert (end["event"], end["task_id"], end["status"]) == ("task_ended", task_id, "ok")

    # Delivered by the unit, not by a process of promote's or the executor's.
    def finished_runs() -> int:
        story = node_host.journalctl("-u", "dispatch-notify.service", "-o", "cat")
        return story.count("Finished dispatch-notify.service")

    d.wait_until(
        "two runs of the unit",
        lambda: finished_runs() >= 2 and d.unit_state("dispatch-notify.service")[0] == "inactive",
    )
    assert node_host.unit_property("dispatch-notify.service", "Result") == "success"
    assert d.shell("ls -A /var/lib/dispatch/notify").split() == [".lock"]  # all delivered


def test_heartbeat_unit_writes_the_metrics_textfile(node_host: SystemdHost) -> None:
    d = DispatchHost(node_host)
    textfile = f"{MNT}/node-exporter/dispatch.prom"
    node_host.run(["mkdir", "-p", f"{MNT}/node-exporter"])
    d.setup(timer=True, settings={"DISPATCH_METRICS_FILE": textfile})
    ok, failed = d.send("fine"), d.send("broken exit=2")
    assert d.wait(ok)["status"] == "ok" and d.wait(failed)["status"] == "error"
    d.shell(f"printf '{{not json' > {LANE}/tmp/junk && mv {LANE}/tmp/junk {LANE}/inbox/junk.json")
    d.wait_until("junk refused", lambda: "junk.json.reason.json" in d.lane_files("rejected"))
    d.dispatch("killswitch", "on", "--reason", "metrics", sender=False)
    d.send("held")
    d.wait_until("held", lambda: len(d.lane_files("processing")) == 1)
    # ProtectSystem=strict: the generator's ReadWritePaths= lets the heartbeat write there.
    node_host.systemctl("start", "dispatch-heartbeat.service")
    assert node_host.unit_property("dispatch-heartbeat.service", "Result") == "success"
    text = d.shell(f"cat {textfile}")
    samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = {k: v for k, v in sample.labels.items() if k != "node"}
            assert sample.labels["node"] == "gpubox"
            samples[sample.name, tuple(sorted(labels.items()))] = sample.value
    assert samples["dispatch_tasks_total", (("status", "ok"),)] == 1
    assert samples["dispatch_tasks_total", (("status", "error"),)] == 1
    assert samples["dispatch_rejections_total", (("reason", "malformed"),)] == 1
    assert samples["dispatch_queue_depth", (("lane", "devbox-to-gpubox"), ("stage", "queued"))] == 1
    assert samples["dispatch_running", ()] == 0
    assert samples["dispatch_killswitch", ()] == 1
    beat = json.loads(d.shell(f"cat {ROOT}/heartbeats/gpubox.json"))
    assert samples["dispatch_last_heartbeat_timestamp_seconds", ()] == round(beat["unix"], 3)
    assert d.shell(f"stat -c %a {textfile}").strip() == "644"
