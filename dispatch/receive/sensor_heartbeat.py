"""The heartbeat dispatch-sensor writes: the bytes `dispatch heartbeat` writes
(ops/overview.heartbeat, fsio.dump_json), from the same sources, with nothing imported
beyond `posix` and `time` (the sensor's resident memory, see sensor.py): hence the
hand-written JSON."""

from __future__ import annotations

import posix
import time

from dispatch.receive.looks import ABSENT, present, signature

TYPE_CHECKING = False  # typing's TYPE_CHECKING without importing typing (see sensor.py)
if TYPE_CHECKING:
    from dispatch.receive.sensor import Settings


def _names(directory: str) -> list[str]:
    try:
        return posix.listdir(directory)
    except OSError:
        return []


def _json_str(text: str) -> str:
    out = []
    for ch in text:
        if ch in '"\\':
            out.append("\\" + ch)
        elif ch < " " or not ch.isascii():
            out.append(f"\\u{ord(ch):04x}")
        else:
            out.append(ch)
    return '"' + "".join(out) + '"'


def _rfc3339(unix: float) -> str:
    whole = int(unix)
    micro = round((unix - whole) * 1e6)
    if micro == 1_000_000:
        whole, micro = whole + 1, 0
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(whole)) + f".{micro:06d}Z"


def read_identity(state_dir: str) -> dict[str, str] | None:
    """version and kid, as `dispatch heartbeat` last recorded them in the node-local state
    (`heartbeat.identity`: KEY=VALUE lines); None before it first ran."""
    try:
        with open(f"{state_dir}/heartbeat.identity", encoding="utf-8") as handle:
            text = handle.read(4096)
    except OSError:
        return None
    values = {}
    for line in text.splitlines():
        key, sep, value = line.partition("=")
        if sep:
            values[key] = value
    return values if "kid" in values and "version" in values else None


def read_config_problem(state_dir: str) -> str:
    """Why this node's config does not load, as `dispatch promote` or `dispatch heartbeat`
    last recorded it (core/broken_config.py); "" while it loads. A sensor started before the
    config broke keeps running on its old settings: its heartbeats must say so too."""
    try:
        with open(f"{state_dir}/config.problem", encoding="utf-8", errors="replace") as handle:
            return handle.read(400).strip()
    except OSError:
        return ""


def heartbeat(settings: Settings, identity: dict[str, str], unix: float) -> bytes:
    """The bytes `dispatch heartbeat` writes (ops/overview.heartbeat, fsio.dump_json), from
    the same sources: processing/ and pending-ack/ listings, the node-local started markers,
    the KILLSWITCH; and a broken config's reason (core/broken_config.py)."""
    running = queued = pending_ack = 0
    for lane in settings.lanes_in():
        for name in _names(f"{lane}/processing"):
            if name.endswith(".json"):
                if present(f"{settings.state_dir}/started/{name[:-5]}"):
                    running += 1
                else:
                    queued += 1
        pending_ack += sum(1 for n in _names(f"{lane}/pending-ack") if n.endswith(".json"))
    killswitch = signature(f"{settings.root}/KILLSWITCH") != ABSENT
    fields = [
        ("node", _json_str(settings.node)),
        ("ts", _json_str(_rfc3339(unix))),
        ("unix", repr(unix)),
        ("version", _json_str(identity["version"])),
        ("running", str(running)),
        ("queued", str(queued)),
        ("pending_ack", str(pending_ack)),
        ("killswitch", "true" if killswitch else "false"),
        ("kid", _json_str(identity["kid"])),
    ]
    problem = read_config_problem(settings.state_dir)
    if problem:
        fields.append(("config_problem", _json_str(problem)))
    body = ",\n".join(f"  {_json_str(k)}: {v}" for k, v in fields)
    return ("{\n" + body + "\n}\n").encode("ascii")


def write_heartbeat(settings: Settings, data: bytes) -> None:
    """Write then rename (the same as fsio.atomic_write), so a reader sees a whole file."""
    final = f"{settings.root}/heartbeats/{settings.node}.json"
    tmp = f"{settings.root}/heartbeats/.{settings.node}.json.sensor.tmp"
    fd = posix.open(
        tmp,
        posix.O_WRONLY | posix.O_CREAT | posix.O_TRUNC | posix.O_NOFOLLOW | posix.O_CLOEXEC,
        0o644,
    )
    try:
        posix.write(fd, data)
        posix.fsync(fd)
    finally:
        posix.close(fd)
    posix.rename(tmp, final)
