"""The local signer is the one process that reads the private key, root's callers included,
under the real units: a whole task's life (root's send and cancel on the sender; promote,
the executor, `dispatch ack` and a verdict on the receiver) opens no key but in the signer.
With the signer stopped nothing is signed in its place and nothing is lost; an agent running
as root reads no key and gets nothing but its own children signed."""

from __future__ import annotations

import json
from typing import Any

from tests.integration.dispatch_host import ROOT, DispatchHost
from tests.integration.sdhost import SystemdHost
from tests.integration.test_signer import (
    KEY,
    events_of,
    host,
    key_openers,
    sender_signer,
    start_key_audit,
)

__all__ = ["host"]  # the fixture, used by name

NODE_KEY = "/etc/dispatch/keys/gpubox.ed25519"
LANE = f"{ROOT}/devbox-to-gpubox"


def node_events(h: SystemdHost, event: str) -> list[dict[str, Any]]:
    story = h.journalctl(f"DISPATCH_EVENT={event}", "-o", "json")
    return [json.loads(line) for line in story.splitlines() if line.strip()]


def test_a_whole_tasks_life_opens_the_key_in_the_signer_alone(host: SystemdHost) -> None:
    d = DispatchHost(host)
    d.setup(timer=False)
    sender_signer(host)  # devbox's root `dispatch send` and `cancel` sign through it
    host.systemctl("start", "dispatch-signer.socket")
    start_key_audit(host, NODE_KEY, "gpubox-key-audit")
    start_key_audit(host, KEY, "devbox-key-audit")

    # Held for an ack: promote admits it, `dispatch ack` (root) releases it, the executor
    # runs it and has its result signed.
    acked = d.send("hello", "--require-ack")
    d.wait_until("pending-ack", lambda: f"{acked}.json" in d.lane_files("pending-ack"))
    d.dispatch("ack", acked, sender=False)
    assert d.wait(acked)["status"] == "ok"
    # Cancelled while it waits: promote signs the `cancelled` verdict.
    cancelled = d.send("never runs", "--require-ack")
    d.wait_until("pending-ack", lambda: f"{cancelled}.json" in d.lane_files("pending-ack"))
    d.dispatch("cancel", cancelled)
    assert d.wait(cancelled)["status"] == "cancelled"

    for name in ("gpubox-key-audit", "devbox-key-audit"):
        openers = key_openers(host, name)
        assert openers, f"{name} saw no open at all: it would prove nothing"
        assert all(" signer" in line for line in openers), (name, openers)
    signed = [
        str(e.get("MESSAGE"))
        for e in events_of(host, "dispatch-signer.service")
        if e.get("DISPATCH_EVENT") == "signer_signed"
    ]
    assert any(m.startswith("ack for ") and m.endswith("uid 0 (root)") for m in signed), signed
    assert any(f"(result of {acked}, by its executor)" in m for m in signed), signed
    verdicts = [m for m in signed if m.startswith("result for ") and "(root)" in m]
    assert len(verdicts) == 1, signed  # the cancel's, by promote outside any execution
    sent = [
        str(e.get("MESSAGE"))
        for e in events_of(host, "devbox-signer.service")
        if e.get("DISPATCH_EVENT") == "signer_signed"
    ]
    assert sum(m.startswith("task for ") for m in sent) == 2, sent
    assert sum(m.startswith("cancel for ") for m in sent) == 1, sent


def test_with_the_signer_stopped_a_result_waits_on_the_node_and_is_published_once_back(
    host: SystemdHost,
) -> None:
    d = DispatchHost(host)
    d.setup(timer=True)
    host.systemctl("start", "dispatch-signer.socket")
    # Masked (as `systemctl mask` would, in the host's /run where the units are) and stopped:
    # the passes and executions, which want it, cannot start it again.
    unit = "/run/systemd/system/dispatch-signer.socket"
    shipped = host.run(["cat", unit]).stdout
    host.run(["ln", "-sf", "/dev/null", unit])
    host.daemon_reload()
    host.systemctl("stop", "dispatch-signer.socket", "dispatch-signer.service")
    # A stopped socket unit leaves its file (RemoveOnStop=no): no caller mistakes it for a
    # host without a signer, and none signs in-process (the units cannot read the key).
    host.run(["test", "-S", "/run/dispatch/signer.sock"])
    task_id = d.send("work done while the signer is down")
    kept = f"/var/lib/dispatch/outbox/{task_id}.json"
    d.wait_until(
        "the kept result", lambda: host.run(["test", "-f", kept], check=False).returncode == 0
    )
    record = json.loads(host.run(["cat", kept]).stdout)
    assert record["lane"] == "devbox-to-gpubox" and "sig" not in record["result"]
    [why] = [
        e for e in node_events(host, "result_unsigned") if e.get("DISPATCH_TASK_ID") == task_id
    ]
    assert "systemctl status dispatch-signer.socket" in str(why["MESSAGE"])
    # Passes go on meanwhile (the timer): the result is not published, nor the task
    # answered `interrupted` in its place, nor run again.
    d.wait_until(
        "a pass that could not sign",
        lambda: any(
            e.get("DISPATCH_TASK_ID") == task_id for e in node_events(host, "verdict_unsigned")
        ),
    )
    assert f"{task_id}.result.json" not in d.lane_files("done")
    status = d.dispatch("status", sender=False).stdout
    assert f"fault devbox-to-gpubox/signer/{task_id}: not signed: " in status, status
    host.run(["rm", unit])
    host.install_unit(shipped, "dispatch-signer.socket")
    host.systemctl("start", "dispatch-signer.socket")
    # The next pass (on a local root the timer only sweeps now and then: start one).
    host.systemctl("start", "dispatch-watch.service")
    result = d.wait(task_id)
    assert result["status"] == "ok"
    assert result["answered_at"] == record["result"]["answered_at"]  # the very result
    assert result["final_text"] == record["result"]["final_text"]
    d.wait_until(
        "the outbox emptied", lambda: host.run(["test", "-e", kept], check=False).returncode != 0
    )
    assert [r["task_id"] for r in d.agent_runs()].count(task_id) == 1
    published = [
        e for e in node_events(host, "result_published") if e.get("DISPATCH_TASK_ID") == task_id
    ]
    assert len(published) == 1, published
    d.wait_until(
        "the fault cleared", lambda: "signer/" not in d.dispatch("status", sender=False).stdout
    )


def test_an_agent_running_as_root_cannot_read_the_key_nor_sign_a_non_child(
    host: SystemdHost,
) -> None:
    d = DispatchHost(host)
    d.setup(timer=False, settings={"DISPATCH_RUN_AS": "root"})
    host.systemctl("start", "dispatch-signer.socket")
    forged = "0b6d1b8e-2f4a-4c1e-9d7a-3f5e6a7b8c9d"
    task_id = d.send(f"read={NODE_KEY} send=devbox parent={forged}")
    result = d.wait(task_id)
    assert result["status"] == "ok", result
    [run] = [r for r in d.agent_runs() if r.get("task_id") == task_id]
    assert run.get("uid") in (None, 0), run  # it did run as root
    # Root opens what InaccessiblePaths= put there (mode 0 is no bar to root): it is empty.
    assert f"read {NODE_KEY}: empty" in str(result["final_text"]), result
    assert run.get("sent") is None
    failure = str(run.get("send_failure"))
    assert failure.startswith(f"dispatch: the signer refused: execution {task_id}"), failure
    assert "may sign only its own children" in failure
    assert (
        d.lane_files("inbox") == []
        and host.run(["ls", "-A", f"{ROOT}/gpubox-to-devbox/inbox"]).stdout == ""
    )
