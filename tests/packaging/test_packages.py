"""The .deb and the .rpm as built by `make deb` / `make rpm`: what they hold, where, their
maintainer scripts, and what lintian and rpmlint say (no errors; each warning explained in
packaging/README.md)."""

from __future__ import annotations

import re
import subprocess
import tomllib
from pathlib import Path

from packaging.requirements import Requirement

from tests.packaging.conftest import PACKAGING, SYSTEM_PATH, TOP, TRIGGERS, UNITS, VERSION


def _out(*argv: str) -> str:
    proc = subprocess.run(
        list(argv),
        capture_output=True,
        text=True,
        check=False,
        timeout=300,
        env={"PATH": SYSTEM_PATH, "LANG": "C.UTF-8"},
    )
    assert proc.returncode == 0, f"{argv}: {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout


def _deb_files(deb: Path) -> dict[str, str]:
    """path (without the leading '.') -> `ls -l` style mode string, from dpkg -c."""
    files = {}
    for line in _out("dpkg-deb", "-c", str(deb)).splitlines():
        fields = line.split(maxsplit=5)
        path = fields[5].split(" -> ")[0]
        files[path.removeprefix(".").rstrip("/") or "/"] = fields[0]
    return files


def _rpm_files(rpm: Path) -> dict[str, str]:
    files = {}
    for line in _out("rpm", "-qlvp", str(rpm)).splitlines():
        fields = line.split()
        path = fields[8]
        files[path] = fields[0]
    return files


# -- contents -------------------------------------------------------------------------------


def test_deb_contents(deb: Path) -> None:
    files = _deb_files(deb)
    for unit in UNITS:
        assert f"/lib/systemd/system/{unit}" in files, f"{unit} not in the .deb"
    generator = files.get("/usr/lib/systemd/system-generators/dispatch-generator", "")
    assert generator.startswith("-rwxr-xr-x"), f"generator missing or not executable: {generator}"
    for path in (
        "/usr/bin/dispatch",
        "/usr/bin/dispatch-send",
        "/usr/bin/dispatch-ack",
        "/usr/share/man/man1/dispatch.1.gz",
        "/usr/share/man/man1/dispatch-send.1.gz",
        "/usr/share/man/man1/dispatch-ack.1.gz",
        "/usr/share/man/man1/dispatch-sensor.1.gz",
        "/usr/share/bash-completion/completions/dispatch",
        "/usr/share/zsh/vendor-completions/_dispatch",
        "/usr/lib/tmpfiles.d/dispatch.conf",
        "/usr/lib/sysusers.d/dispatch.conf",
        "/usr/lib/python3/dist-packages/dispatch/cli.py",
        "/usr/lib/python3/dist-packages/dispatch/signer/server.py",
        "/usr/share/doc/dispatch/copyright",
    ):
        assert path in files, f"{path} not in the .deb"
    # The generator runs from systemd's generator directory only.
    assert "/usr/bin/dispatch-generator" not in files
    # In /etc only the config template, which sets nothing (the key wakes the units).
    assert [p for p in files if p.startswith("/etc/")] == [
        "/etc/dispatch",
        "/etc/dispatch/dispatch.conf",
    ]


def test_rpm_contents(rpm: Path) -> None:
    files = _rpm_files(rpm)
    for unit in UNITS:
        assert f"/usr/lib/systemd/system/{unit}" in files, f"{unit} not in the .rpm"
    generator = files.get("/usr/lib/systemd/system-generators/dispatch-generator", "")
    assert generator.startswith("-rwxr-xr-x"), f"generator missing or not executable: {generator}"
    for path in (
        "/usr/bin/dispatch",
        "/usr/bin/dispatch-send",
        "/usr/bin/dispatch-ack",
        "/usr/share/man/man1/dispatch.1.gz",
        "/usr/share/man/man1/dispatch-send.1.gz",
        "/usr/share/man/man1/dispatch-ack.1.gz",
        "/usr/share/man/man1/dispatch-sensor.1.gz",
        "/usr/share/bash-completion/completions/dispatch",
        "/usr/share/zsh/site-functions/_dispatch",
        "/usr/lib/tmpfiles.d/dispatch.conf",
        "/usr/lib/sysusers.d/dispatch.conf",
        "/usr/lib/systemd/system-preset/50-dispatch.preset",
        "/etc/dispatch/dispatch.conf",
    ):
        assert path in files, f"{path} not in the .rpm"
    assert "/usr/bin/dispatch-generator" not in files
    # The modules in a directory that names no Python version, found by the launchers;
    # byte-compiled at installation by the target's python3, so none is shipped.
    assert "/usr/share/dispatch/dispatch/cli.py" in files
    assert not [p for p in files if re.match(r"/usr/lib(64)?/python3", p)]
    assert not [p for p in files if p.endswith(".pyc")]
    scripts = _out("rpm", "-qp", "--scripts", str(rpm))
    assert "/usr/bin/python3 -m compileall -q /usr/share/dispatch/dispatch" in scripts, scripts
    # The config ships as a commented template, a %config(noreplace) file (flags c and n).
    config = _out("rpm", "-qp", "--qf", "[%{FILENAMES} %{FILEFLAGS:fflags}\n]", str(rpm))
    flags = re.search(r"^/etc/dispatch/dispatch\.conf (\S+)", config, re.M)
    assert (
        flags and "c" in flags.group(1) and "n" in flags.group(1) and "g" not in flags.group(1)
    ), config


def test_tmpfiles_make_the_secret_directories_root_only() -> None:
    lines = [
        line.split()
        for line in (PACKAGING / "tmpfiles.d/dispatch.conf").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    modes = {fields[1]: (fields[2], fields[3], fields[4]) for fields in lines}
    assert modes["/etc/dispatch/keys"] == ("0700", "root", "root")
    assert modes["/var/lib/dispatch"] == ("0700", "root", "root")


def test_sysusers_make_the_agent_user_that_init_configures() -> None:
    from dispatch.core.config import DEFAULT_AGENT_USER

    lines = [
        line.split()
        for line in (PACKAGING / "sysusers.d/dispatch.conf").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert [(fields[0], fields[1]) for fields in lines] == [
        ("u", DEFAULT_AGENT_USER),
        ("g", "dispatch"),  # the signer signs tasks and cancels for its members
    ]


# -- metadata and scripts -----------------------------------------------------------------


def test_versions_agree() -> None:
    changelog = (PACKAGING / "debian/changelog").read_text().splitlines()[0]
    assert changelog.startswith(f"dispatch ({VERSION}-"), changelog
    spec = (PACKAGING / "rpm/dispatch.spec").read_text()
    assert re.search(rf"^Version:\s+{re.escape(VERSION)}$", spec, re.M)
    assert f'"dispatch {VERSION}"' in (PACKAGING / "man/dispatch.1").read_text()


def test_deb_depends_on_the_distribution_modules(deb: Path) -> None:
    depends = _out("dpkg-deb", "-f", str(deb), "Depends")
    for pkg in ("python3-systemd", "python3-click", "python3-pyinotify"):
        assert re.search(rf"(^|, ){pkg}\b", depends), f"{pkg} not in Depends: {depends}"


def test_rpm_requires_the_distribution_modules(rpm: Path) -> None:
    requires = _out("rpm", "-qpR", str(rpm))
    for dist in ("systemd-python", "click", "pyinotify"):
        assert f"python3dist({dist})" in requires, requires
    # Any Python 3 >= 3.11 of the target, not the build machine's python(abi) = 3.X.
    assert "python3 >= 3.11" in requires.splitlines(), requires
    assert not re.search(r"python\(abi\)|python3\.\d+dist", requires), requires


def test_packages_follow_pyproject_dependencies() -> None:
    """A runtime dependency added to pyproject.toml must reach both packages' metadata."""
    project = tomllib.loads((TOP / "pyproject.toml").read_text())["project"]
    # Bookworm's interpreter, and the oldest the packages accept.
    env = {"python_version": "3.11", "python_full_version": "3.11.2"}
    names = []
    for text in project["dependencies"]:
        req = Requirement(text)
        if req.marker is None or req.marker.evaluate(env):
            names.append(req.name.lower())
    control = (PACKAGING / "debian/control").read_text()
    spec = (PACKAGING / "rpm/dispatch.spec").read_text()
    for name in names:
        assert re.search(rf"\bpython3-{re.escape(name)}\b", control.split("Package:")[1]), (
            f"{name} (pyproject.toml) is not in debian/control's Depends"
        )
        assert f"python3dist({name})" in spec, f"{name} (pyproject.toml) is not in the spec"


def test_deb_scripts_enable_and_start_only_the_triggers(deb: Path, tmp_path: Path) -> None:
    _out("dpkg-deb", "-e", str(deb), str(tmp_path / "control"))
    postinst = (tmp_path / "control/postinst").read_text()
    enabled = sorted(set(re.findall(r"deb-systemd-helper enable '([^']+)'", postinst)))
    assert enabled == TRIGGERS
    started = re.findall(r"deb-systemd-invoke \$_dh_action (.+?) >", postinst)
    assert len(started) == 1 and sorted(started[0].replace("'", "").split()) == TRIGGERS
    assert "systemd-tmpfiles" in postinst and "dispatch.conf" in postinst
    prerm = (tmp_path / "control/prerm").read_text()
    assert "dispatch-exec@*.service" in prerm and "dispatch.slice" in prerm
    postrm = (tmp_path / "control/postrm").read_text()
    assert "rm -rf /etc/dispatch /var/lib/dispatch" in postrm
    assert "deb-systemd-helper purge" in postrm


def test_rpm_scripts_preset_and_restart_the_triggers(rpm: Path) -> None:
    scripts = _out("rpm", "-qp", "--scripts", str(rpm))
    preset = (PACKAGING / "rpm/50-dispatch.preset").read_text()
    assert sorted(re.findall(r"^enable (\S+)$", preset, re.M)) == TRIGGERS
    for trigger in TRIGGERS:
        assert scripts.count(trigger) >= 3, f"{trigger} not in %post, %preun and %postun"
    assert "preset" in scripts and "try-restart" in scripts and "disable --now" in scripts
    assert "systemd-tmpfiles --create" in scripts
    assert "dispatch-exec@*.service" in scripts


def test_completion_scripts_are_clicks(deb: Path, tmp_path: Path) -> None:
    _out("dpkg-deb", "-x", str(deb), str(tmp_path))
    bash = (tmp_path / "usr/share/bash-completion/completions/dispatch").read_text()
    assert "_DISPATCH_COMPLETE=bash_complete" in bash
    assert "complete -o nosort -F _dispatch_completion dispatch" in bash
    zsh = (tmp_path / "usr/share/zsh/vendor-completions/_dispatch").read_text()
    assert zsh.startswith("#compdef dispatch") and "_DISPATCH_COMPLETE=zsh_complete" in zsh


# -- linters ----------------------------------------------------------------------------------


def _undocumented(tags: set[str]) -> list[str]:
    readme = (PACKAGING / "README.md").read_text()
    return sorted(t for t in tags if f"`{t}`" not in readme)


def test_lintian_no_errors_and_warnings_documented(deb: Path) -> None:
    proc = subprocess.run(
        ["lintian", "--tag-display-limit", "0", str(deb)],
        capture_output=True,
        text=True,
        check=False,
        timeout=600,
        env={"PATH": SYSTEM_PATH, "LANG": "C.UTF-8"},
    )
    lines = proc.stdout.splitlines()
    errors = [line for line in lines if line.startswith("E: ")]
    assert not errors, "\n".join(lines)
    warnings = {line.split()[2] for line in lines if line.startswith("W: ")}
    assert not _undocumented(warnings), (
        f"lintian warnings not explained in packaging/README.md: {_undocumented(warnings)}\n"
        + "\n".join(lines)
    )


def test_rpmlint_no_errors_and_warnings_documented(rpm: Path) -> None:
    proc = subprocess.run(
        ["rpmlint", "-c", str(PACKAGING / "rpm/rpmlint.toml"), str(rpm)],
        capture_output=True,
        text=True,
        check=False,
        timeout=600,
        env={"PATH": SYSTEM_PATH, "LANG": "C.UTF-8"},
    )
    lines = proc.stdout.splitlines()
    summary = [line for line in lines if "packages and" in line]
    assert summary and " 0 errors" in summary[0], "\n".join(lines) + proc.stderr
    warnings = {line.split()[2] for line in lines if re.match(r"\S+: W: ", line)}
    assert not _undocumented(warnings), (
        f"rpmlint warnings not explained in packaging/README.md: {_undocumented(warnings)}\n"
        + "\n".join(lines)
    )
