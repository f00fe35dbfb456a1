"""The receiver's pass, in named steps over one shared `Pass`:

admission   verify every inbox entry (intake), record it, move it on or quarantine it
acks        ack giving (`dispatch ack`) and checking, the ack TTL
recovery    deferred results, processing/ classified, interrupted and unstarted answers
cancels     signed cancel requests, recorded before they are acted on
queue       order by priority and age, and the one start-up-to-cap
pass_       one pass, the short orchestrator of the above
settle      passes until quiet, and the linger that feeds a backlog into freed slots
"""

from dispatch.receive.promote.pass_ import promote
from dispatch.receive.promote.queue import refill
from dispatch.receive.promote.report import PassReport, summary
from dispatch.receive.promote.settle import run_unit_pass, settle

__all__ = ["PassReport", "promote", "refill", "run_unit_pass", "settle", "summary"]
