"""How a pass ends on a node that runs dispatch-sensor: with a settled look it leaves for
the sensor (receive/looks.py).

Without it every task cost three passes over a network share, each a sandboxed Python
start: the one its arrival kicked; one more because that pass moving the task out of
inbox/ is itself a change the sensor sees; and the settle kick a second later, for a second
arrival hidden in the same whole-second mtime. Passes that close together also collide:
a task landing while a useless one runs waits for it to end and for a repeated kick.

Here the pass that is already running does that waiting: it looks until the look is
settled (handling whatever arrives meanwhile at once, with no new process), runs one more
pass over everything that look covers, and leaves the look only if that pass moved nothing
it shows. The sensor then takes it as seen: no second pass, no settle kick.
"""

from __future__ import annotations

from dispatch.core.node import Node
from dispatch.receive import looks
from dispatch.receive.launch import Launcher
from dispatch.receive.promote.pass_ import promote
from dispatch.receive.promote.report import PassReport

# Passes that keep moving what the look shows: leave no look after this many rounds, and
# the sensor's own kicks take over (settled_look gives up by itself on lanes that never
# stop changing).
MAX_ROUNDS = 4


def end_with_settled_look(
    node: Node, launcher: Launcher, report: PassReport, looked_file: str
) -> PassReport:
    fast, slow = looks.watched_paths(str(node.cfg.root), node.name, node.cfg.peers)
    paths = fast + slow
    latest = report

    def handle_change() -> None:
        nonlocal latest
        latest = promote(node, launcher)

    for _ in range(MAX_ROUNDS):
        look = looks.settled_look(
            paths,
            on_change=handle_change,
            listed=fast,
            settled=looks.LookedFile(looked_file).fresh(),
        )
        if look is None:
            break
        # Lists inbox/, pending-ack/, cancel/ and the KILLSWITCH after the look: whatever
        # came before the look is handled by now.
        latest = promote(node, launcher)
        if {p: looks.signature(p) for p in paths} == look:
            looks.write_looked(look, looked_file)
            break
    return latest
