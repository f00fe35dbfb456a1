"""`dispatch init`: the shared layout, this node's key pair (its public half pinned here and
published on the share), node-local state and a config file."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

from dispatch.core import config as config_mod
from dispatch.core.config import DEFAULT_AGENT_USER, Config
from dispatch.core.errors import ConfigError, UsageError
from dispatch.core.fsio import DirRefused
from dispatch.core.keys import (
    NodeKey,
    Pins,
    PublicKey,
    load_private,
    private_key_path,
    publish,
    read_private_file,
    write_private,
)
from dispatch.core.knobs import valid_node
from dispatch.core.lanedirs import make_layout
from dispatch.core.spool import Spool, sender_group
from dispatch.core.state import NodeState


class Made(StrEnum):
    """What init did to each thing it sets up: the operator must know what came from where."""

    CREATED = "created"
    IMPORTED = "imported"
    FILLED = "filled in"  # the package's commented template
    OVERWRITTEN = "overwritten"
    KEPT = "kept"


@dataclass(frozen=True)
class InitReport:
    config_path: Path
    config_made: Made
    key: PublicKey
    key_path: Path
    key_made: Made
    key_source: Path | None  # the --key-file it came from
    lanes: list[str]
    lanes_created: tuple[str, ...]
    peers: tuple[str, ...]
    peers_pinned: tuple[str, ...]  # peers with a key pinned here already (a re-run)

    @property
    def config_written(self) -> bool:
        return self.config_made is not Made.KEPT

    def peer_command(self) -> str:
        """What to run on each peer to pin this node's key (public: safe to copy)."""
        return f"echo '{self.key.line()}' | dispatch peers add {self.key.node} -"

    def peers_unpinned(self) -> tuple[str, ...]:
        return tuple(p for p in self.peers if p not in self.peers_pinned)


def init_node(
    *,
    root: Path,
    node: str,
    peers: list[str],
    config_path: Path,
    key_dir: Path,
    state_dir: Path,
    peers_dir: Path | None = None,
    force: bool = False,
    run_as: str = DEFAULT_AGENT_USER,
    extra: Mapping[str, str] | None = None,
    key_file: Path | None = None,
) -> InitReport:
    """Create the layout, a key, local state and the config file. The agent runs as
    `run_as` (the packages' unprivileged dispatch-agent by default), never as root unless
    that says `root`. `key_file`: this node's existing private key, imported instead of
    making one."""
    problems = [f"not a valid node name: {n!r}" for n in [node, *peers] if not valid_node(n)]
    if not peers:
        problems.append("at least one peer is needed (--peers)")
    if node in peers:
        problems.append("a node cannot be its own peer")
    if not root.is_absolute():
        problems.append(f"--root must be an absolute path: {root}")
    if problems:
        raise UsageError("; ".join(problems))
    template = ""
    if config_path.exists() and not force:
        existing = config_mod.parse_env_file(config_path)
        if existing.get("DISPATCH_NODE") not in (None, node) or existing.get(
            "DISPATCH_ROOT"
        ) not in (None, str(root)):
            raise UsageError(
                f"{config_path} already configures another node or root; "
                "pass --force to overwrite it"
            )
        if not existing:
            # The package's commented template (a conffile): fill it in, keep its comments.
            template = config_path.read_text()
    cfg = Config(
        root=root,
        node=node,
        peers=tuple(peers),
        key_dir=key_dir,
        peer_keys_dir=peers_dir,
        state_dir=state_dir,
        config_path=config_path,
    )
    spool = Spool(root)
    imported = read_private_file(key_file, node) if key_file is not None else None
    lanes_before = {
        lane.name for lane in spool.lanes_in(cfg) + spool.lanes_out(cfg) if lane.path.is_dir()
    }
    try:
        # Group `dispatch` may send without a key (the signer); only root can give it the lanes.
        make_layout(spool, cfg, sender_group() if os.geteuid() == 0 else None)
    except DirRefused as exc:
        raise ConfigError(
            f"cannot create the layout under {root}: {exc} (something on the share is not "
            "what `dispatch init` makes: look at it, move it away, run init again)"
        ) from None
    except OSError as exc:
        raise ConfigError(
            f"cannot create the layout under {root}: {exc.strerror} "
            "(is the share mounted and writable?)"
        ) from None
    NodeState(state_dir).ensure()
    os.chmod(state_dir, 0o700)
    key, key_made = ensure_key(cfg, imported)
    pinned = tuple(p for p in peers if _pinned(cfg, p))
    values = {"DISPATCH_ROOT": str(root), "DISPATCH_NODE": node, "DISPATCH_PEERS": ",".join(peers)}
    if key_dir != Path("/etc/dispatch/keys"):
        values["DISPATCH_KEY_DIR"] = str(key_dir)
    if peers_dir is not None and peers_dir != key_dir.parent / "peers":
        values["DISPATCH_PEERS_DIR"] = str(peers_dir)
    if state_dir != Path("/var/lib/dispatch"):
        values["DISPATCH_STATE_DIR"] = str(state_dir)
    if run_as:
        values["DISPATCH_RUN_AS"] = run_as
    values.update(extra or {})
    config_made = Made.KEPT
    if force or template or not config_path.exists():
        config_made = (
            Made.FILLED if template else Made.OVERWRITTEN if config_path.exists() else Made.CREATED
        )
        config_path.parent.mkdir(parents=True, exist_ok=True)
        text = config_mod.render(values)
        # 0640 before a byte is written: it may hold a webhook URL with its token.
        fd = os.open(config_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o640)
        os.fchmod(fd, 0o640)
        # Group `dispatch` (the packages' sysusers.d) reads it: its members send through the
        # local signer and need the root, node and peers, never a key.
        group = sender_group()
        if group is not None and os.geteuid() == 0:
            os.fchown(fd, 0, group)
        with os.fdopen(fd, "w") as handle:
            handle.write(text + ("\n" + template if template else ""))
    lanes = [lane.name for lane in spool.lanes_in(cfg) + spool.lanes_out(cfg)]
    return InitReport(
        config_path=config_path,
        config_made=config_made,
        key=key,
        key_path=private_key_path(key_dir, node),
        key_made=key_made,
        key_source=key_file,
        lanes=lanes,
        lanes_created=tuple(name for name in lanes if name not in lanes_before),
        peers=tuple(peers),
        peers_pinned=pinned,
    )


def _pinned(cfg: Config, peer: str) -> bool:
    try:
        return bool(Pins(cfg.peers_dir).keys_of(peer))
    except ConfigError:
        return False  # a pin file that does not parse pins nothing: doctor says why


def reload_systemd(config_path: Path) -> bool:
    """Let dispatch-generator turn the new config into unit drop-ins (lanes, limits, poll)."""
    if config_path != config_mod.DEFAULT_CONFIG or not config_mod.systemd_is_pid1():
        return False
    from dispatch.core.runner import systemctl

    systemctl("daemon-reload", timeout=120)
    return True


def ensure_key(cfg: Config, imported: NodeKey | None = None) -> tuple[PublicKey, Made]:
    """This node's key pair (made when absent, or `imported`), its public key pinned here as
    its own and published on the share for peers' `doctor` to compare (never to trust)."""
    path = private_key_path(cfg.key_dir, cfg.node)
    if path.exists():
        key = load_private(cfg.key_dir, cfg.node)
        if imported is not None and imported.public.raw != key.public.raw:
            raise UsageError(
                f"{path} already holds another key ({key.public.kid}) than --key-file "
                f"{imported.path} ({imported.public.kid}): remove it first, or rotate with "
                "`dispatch keys rotate`"
            )
        made = Made.KEPT
    elif imported is not None:
        key = write_private(cfg.key_dir, cfg.node, imported.private)
        made = Made.IMPORTED
    else:
        key = write_private(cfg.key_dir, cfg.node)
        made = Made.CREATED
    public = key.public
    Pins(cfg.peers_dir).add(public, f"this node's own key {path}")
    publish(cfg.root, public)
    return public, made
