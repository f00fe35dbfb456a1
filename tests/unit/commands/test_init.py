"""`dispatch init` says what it created, imported or kept, and the commands left to run."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from tests.unit.helpers import cli


def _init(tmp_path: Path, name: str, *extra: str) -> subprocess.CompletedProcess[str]:
    here = tmp_path / name
    args = ["init", "--local", "--root", str(tmp_path / "share"), "--node", "n1"]
    args += ["--peers", "n2,n3", "--config", str(here / "n1.conf")]
    args += ["--key-dir", str(here / "keys"), "--state-dir", str(here / "state")]
    return cli(None, *args, *extra)


def _line(stdout: str, prefix: str) -> str:
    return next(line for line in stdout.splitlines() if line.startswith(prefix))


def test_fresh_init_says_what_it_created_and_every_next_command(tmp_path: Path) -> None:
    proc = _init(tmp_path, "a")
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert _line(out, "config ") == f"config {tmp_path / 'a' / 'n1.conf'} (created)"
    assert _line(out, "key ").endswith(f"(created): {tmp_path / 'a' / 'keys' / 'n1.ed25519'}")
    assert _line(out, "peers: ") == "peers: n2, n3 not pinned yet (see below)"
    assert _line(out, "lanes: ").endswith("(created)")
    public = _line(out, "public key: ").removeprefix("public key: ")
    lines = out.splitlines()
    # For the peers: the exact line to paste there.
    peer_at = lines.index("on each peer (n2, n3), pin it (then compare the fingerprint):")
    assert lines[peer_at + 1] == f"  echo '{public}' | dispatch peers add n1 -"
    # For this host: pin each peer, start the node, check it; in that order.
    here = lines[lines.index("then on this host:") + 1 :]
    assert here[0].endswith("| dispatch peers add n2 -")
    assert here[1].endswith("| dispatch peers add n3 -")
    start = here[2].split("#")[0].strip()
    assert start in ("systemctl enable --now dispatch.target", "dispatch watch")
    assert here[3].startswith("  dispatch doctor")
    assert len(here) == 4


def test_rerun_keeps_and_says_kept_never_created(tmp_path: Path) -> None:
    assert _init(tmp_path, "a").returncode == 0
    again = _init(tmp_path, "a")
    assert again.returncode == 0, again.stderr
    assert "(created)" not in again.stdout
    assert _line(again.stdout, "config ").endswith("(kept: it already configures this node)")
    assert "(kept: already there)" in _line(again.stdout, "key ")
    assert _line(again.stdout, "lanes: ").endswith("(already there)")


def test_key_file_is_imported_not_created(tmp_path: Path) -> None:
    """A node moving hosts keeps its key: init imports it, says from where, and the key id
    (what the peers pinned) is the same."""
    first = _init(tmp_path, "old")
    assert first.returncode == 0, first.stderr
    backup = tmp_path / "backup.pem"
    shutil.copy(tmp_path / "old" / "keys" / "n1.ed25519", backup)
    moved = _init(tmp_path, "new", "--key-file", str(backup))
    assert moved.returncode == 0, moved.stderr
    key_line = _line(moved.stdout, "key ")
    assert f"(imported from {backup})" in key_line
    assert "created" not in key_line
    assert _line(moved.stdout, "config ").endswith("(created)")
    # The layout was made by the first init: the second says it found it.
    assert _line(moved.stdout, "lanes: ").endswith("(already there)")
    assert key_line.split()[1] == _line(first.stdout, "key ").split()[1]
    assert _line(moved.stdout, "public key: ") == _line(first.stdout, "public key: ")
    installed = tmp_path / "new" / "keys" / "n1.ed25519"
    assert installed.read_bytes() == backup.read_bytes()
    assert installed.stat().st_mode & 0o777 == 0o600


def test_key_file_that_is_not_a_key_or_differs_is_one_line(tmp_path: Path) -> None:
    junk = tmp_path / "junk.pem"
    junk.write_text("not a key\n")
    proc = _init(tmp_path, "a", "--key-file", str(junk))
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1
    assert "not an unencrypted PEM Ed25519 private key" in proc.stderr
    assert not (tmp_path / "a" / "keys" / "n1.ed25519").exists()
    assert _init(tmp_path, "b").returncode == 0
    assert _init(tmp_path, "c").returncode == 0
    other = tmp_path / "c" / "keys" / "n1.ed25519"
    clash = _init(tmp_path, "b", "--key-file", str(other))
    assert clash.returncode == 2 and "already holds another key" in clash.stderr
