"""Property-based tests (hypothesis) of envelope and result parsing and verification:

- no input, bytes or JSON, makes intake or result verification raise anything but
  dispatch's own `Rejection`;
- signing then verifying round-trips, for envelopes and results;
- any single-byte change of a signed envelope or result, as written to the share, fails
  verification (or leaves the very same object: insignificant whitespace).

11,000 examples in all, derandomized (no example database), so CI sees the same ones on
every run; a failure prints the example that caused it."""

from __future__ import annotations

import atexit
import contextlib
import json
import shutil
import string
import tempfile
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dispatch.core.config import Config
from dispatch.core.errors import Rejection
from dispatch.core.fsio import dump_json
from dispatch.core.keys import Pins, write_private
from dispatch.core.model import Callback, Envelope, Priority, Result, Status
from dispatch.core.signing import NodeKeys, sign_envelope, sign_result, verify_result
from dispatch.core.spool import Lane
from dispatch.core.wire import canonical, loads_strict, rfc3339
from dispatch.receive.intake import Admitted, examine
from tests.unit.helpers import verifies

# Each node's own key pair, each pinning the other's (made once, in a directory of its own).
KEYS_HOME = Path(tempfile.mkdtemp(prefix="dispatch-properties-"))
atexit.register(shutil.rmtree, KEYS_HOME, True)
PRIVATE = {n: write_private(KEYS_HOME / n / "keys", n) for n in ("devbox", "gpubox")}
for _node in PRIVATE:
    for _key in PRIVATE.values():
        Pins(KEYS_HOME / _node / "peers").add(_key.public, "test")
CFG = Config(
    root=Path("/nonexistent"),
    node="gpubox",
    peers=("devbox",),
    key_dir=KEYS_HOME / "gpubox" / "keys",
    accept_v2=True,
)
SENDER = NodeKeys(
    replace(CFG, node="devbox", peers=("gpubox",), key_dir=KEYS_HOME / "devbox" / "keys")
)
RING = NodeKeys(CFG)  # the receiver's: signs results, verifies tasks
LANE = Lane(Path("/nonexistent"), "devbox", "gpubox")


def profile(examples: int) -> settings:
    return settings(
        max_examples=examples,
        derandomize=True,
        database=None,
        deadline=None,
        suppress_health_check=list(HealthCheck),
    )


# -- strategies ---------------------------------------------------------------------------------

# Any code point, with lone surrogates (JSON can escape them: \ud800) and NULs made common.
ODD = [
    "\ud800",
    "\udfff",
    "\udc80",
    "\x00",
    "\u2028",
    "\ufeff",
    "\x7f",
    "\u0085",
    "é",
    "\U0001f600",
    "\\",
    '"',
    "\n",
]
odd_texts = st.lists(st.one_of(st.sampled_from(ODD), st.characters()), max_size=10).map("".join)
json_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=False, allow_infinity=False),
    odd_texts,
)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=12), inner, max_size=4)
    ),
    max_leaves=12,
)
# Text as an agent request may hold it: any character JSON and UTF-8 can carry, but NUL.
texts = st.text(
    st.characters(exclude_categories=["Cs"], exclude_characters="\x00"), min_size=1, max_size=200
).filter(lambda t: t.strip() != "")
uuids = st.uuids(version=4).map(str)
recent = st.integers(min_value=-3600, max_value=60).map(
    lambda s: rfc3339(datetime.now(UTC) + timedelta(seconds=s))
)

ENVELOPE_FIELDS = [
    "schema",
    "kind",
    "id",
    "from",
    "to",
    "created",
    "priority",
    "request",
    "require_ack",
    "require_dangerous",
    "timeout_s",
    "max_output_bytes",
    "callback",
    "parent",
    "hops",
    "kid",
    "sig",
]


@st.composite
def envelopes(draw: st.DrawFn) -> Envelope:
    """A valid schema-4 envelope devbox -> gpubox, within this node's policy, signed by
    devbox's key."""
    envelope = Envelope(
        id=draw(uuids),
        from_="devbox",
        to="gpubox",
        created=draw(recent),
        priority=draw(st.sampled_from(Priority)),
        request=draw(texts),
        require_ack=draw(st.booleans()),
        require_dangerous=draw(st.booleans()),
        timeout_s=draw(st.integers(1, CFG.timeout_max_s)),
        max_output_bytes=draw(st.integers(1, CFG.max_output_bytes_max)),
        callback=draw(st.sampled_from(Callback)),
        parent=draw(st.none() | uuids),
        hops=draw(st.integers(0, CFG.max_hops)),
        kid="",
        sig="",
    )
    return sign_envelope(SENDER, envelope)


@st.composite
def results(draw: st.DrawFn) -> Result:
    result = Result(
        id=draw(uuids),
        answered_by="gpubox",  # the lane's receiver: no other answer verifies
        answered_at=draw(recent),
        request=draw(st.text(max_size=100)),
        status=draw(st.sampled_from(Status)),
        exit_code=draw(st.integers(-(2**31), 2**31)),
        elapsed_s=draw(st.floats(min_value=0, max_value=1e9, allow_nan=False)),
        log_path=draw(st.text(max_size=60)),
        final_text=draw(st.text(max_size=100)),
        output_tail=draw(st.text(max_size=100)),
        output_bytes=draw(st.integers(0, 2**40)),
        perm_mode=draw(st.sampled_from(["acceptEdits", "bypassPermissions", ""])),
        started_at=draw(st.none() | recent),
        truncated=draw(st.booleans()),
        unit=draw(st.text(max_size=40)),
        reason=draw(st.text(max_size=60)),
        kid="",
        sig="",
    )
    return sign_result(RING, result, LANE)


@st.composite
def mangled_envelopes(draw: st.DrawFn) -> dict[str, Any]:
    """A signed envelope (schema 4, or schema 2 when drawn) with fields replaced by any JSON
    value, removed, or added: close enough to valid to reach the deep checks."""
    obj = draw(envelopes()).to_json()
    if draw(st.booleans()):
        obj = {
            k: v
            for k, v in obj.items()
            if k in ("id", "from", "to", "created", "priority", "request")
        }
        obj["schema"] = 2
        obj["hmac"] = "0" * 64
    for _ in range(draw(st.integers(0, 3))):
        action = draw(st.sampled_from(["replace", "delete", "add"]))
        name = draw(st.sampled_from(ENVELOPE_FIELDS))
        if action == "replace":
            obj[name] = draw(st.one_of(odd_texts, json_values))
        elif action == "delete":
            obj.pop(name, None)
        else:
            obj[draw(st.text(max_size=10))] = draw(json_values)
    return obj


@st.composite
def mangled_results(draw: st.DrawFn) -> dict[str, Any]:
    obj = draw(results()).to_json()
    for _ in range(draw(st.integers(1, 3))):
        name = draw(st.sampled_from(sorted(obj)))
        if draw(st.booleans()):
            obj[name] = draw(st.one_of(odd_texts, json_values))
        else:
            obj.pop(name, None)
    return obj


names = st.one_of(st.text(max_size=60), uuids.map(lambda u: f"{u}.json"))


def intake(name: str, data: bytes) -> Admitted | None:
    """Strict intake of one inbox entry: admitted, or refused with a `Rejection`."""
    try:
        return examine(CFG, RING, LANE, name, data)
    except Rejection:
        return None


def wire(envelope: Envelope) -> bytes:
    """As `dispatch send` writes it."""
    return canonical(envelope.to_json()) + b"\n"


# -- nothing but Rejection ------------------------------------------------------------------------


@profile(1500)
@given(
    st.one_of(
        st.binary(max_size=512),
        json_values.map(lambda v: json.dumps(v).encode()),
        st.text(max_size=200).map(lambda t: t.encode("utf-8", "surrogatepass")),
    )
)
def test_any_bytes_are_parsed_or_rejected(data: bytes) -> None:
    with contextlib.suppress(Rejection):
        assert isinstance(loads_strict(data), dict)
    intake(f"{'0' * 8}-0000-4000-8000-{'0' * 12}.json", data)


@profile(2500)
@given(mangled_envelopes(), names, st.booleans())
def test_any_envelope_shape_is_admitted_or_rejected(
    obj: dict[str, Any], name: str, own_name: bool
) -> None:
    if own_name and isinstance(obj.get("id"), str):
        name = f"{obj['id']}.json"
    for data in (
        json.dumps(obj).encode(),
        json.dumps(obj, ensure_ascii=False).encode("utf-8", "surrogatepass"),
    ):
        admitted = intake(name, data)
        if admitted is not None:
            assert admitted.envelope.id == obj["id"] and name == f"{obj['id']}.json"


@profile(1500)
@given(mangled_results())
def test_any_result_shape_verifies_or_is_rejected(obj: dict[str, Any]) -> None:
    for data in (json.dumps(obj).encode(), dump_json(obj)):
        with contextlib.suppress(Rejection):
            verify_result(RING, loads_strict(data, allow_nul=True), LANE)


# -- round trips ------------------------------------------------------------------------------


@profile(1000)
@given(envelopes())
def test_envelope_sign_then_verify_round_trips(envelope: Envelope) -> None:
    # The signature is the design's: Ed25519 over canonical JSON, checked here apart.
    assert verifies(PRIVATE["devbox"].private, envelope.to_json())
    admitted = intake(f"{envelope.id}.json", wire(envelope))
    assert admitted is not None
    assert admitted.envelope == envelope
    assert admitted.needs_ack == (envelope.require_ack or envelope.require_dangerous)


@profile(1000)
@given(results())
def test_result_sign_then_verify_round_trips(result: Result) -> None:
    assert verifies(PRIVATE["gpubox"].private, result.to_json())
    wire_form = loads_strict(dump_json(result.to_json()), allow_nul=True)
    assert verify_result(RING, wire_form, LANE) == result


# -- any single-byte change -------------------------------------------------------------------

WHITESPACE = b" \t\r\n"


@profile(2000)
@given(envelopes(), st.data())
def test_any_single_byte_change_of_an_envelope_fails(
    envelope: Envelope, data: st.DataObject
) -> None:
    original = wire(envelope)
    index = data.draw(st.integers(0, len(original) - 1), label="index")
    byte = data.draw(st.integers(0, 255).filter(lambda b: b != original[index]), label="byte")
    changed = original[:index] + bytes([byte]) + original[index + 1 :]
    admitted = intake(f"{envelope.id}.json", changed)
    if index == len(original) - 1 and byte in WHITESPACE:
        # The trailing newline is outside the JSON value: any whitespace will do.
        assert admitted is not None and admitted.envelope == envelope
    else:
        assert admitted is None, (index, byte, changed)


@profile(1500)
@given(results(), st.data())
def test_any_single_byte_change_of_a_result_fails(result: Result, data: st.DataObject) -> None:
    original = dump_json(result.to_json())  # as results are written: indented
    index = data.draw(st.integers(0, len(original) - 1), label="index")
    byte = data.draw(st.integers(0, 255).filter(lambda b: b != original[index]), label="byte")
    changed = original[:index] + bytes([byte]) + original[index + 1 :]
    try:
        verified = verify_result(RING, loads_strict(changed, allow_nul=True), LANE)
    except Rejection:
        return
    # Still verifying means nothing that counts changed: whitespace between tokens, or the
    # spelling of the same number (1e-05 and 1E-05).
    assert verified == result, (index, byte)
    assert (
        chr(original[index]) in string.whitespace + "eE+-0123456789"
        or original[index] in WHITESPACE
    )


SETTINGS = "_hypothesis_internal_use_settings"  # where @settings leaves them on a test


def test_the_examples_add_up_to_at_least_ten_thousand() -> None:
    total = sum(
        getattr(t, SETTINGS).max_examples
        for t in (
            test_any_bytes_are_parsed_or_rejected,
            test_any_envelope_shape_is_admitted_or_rejected,
            test_any_result_shape_verifies_or_is_rejected,
            test_envelope_sign_then_verify_round_trips,
            test_result_sign_then_verify_round_trips,
            test_any_single_byte_change_of_an_envelope_fails,
            test_any_single_byte_change_of_a_result_fails,
        )
    )
    assert total >= 10_000, total
