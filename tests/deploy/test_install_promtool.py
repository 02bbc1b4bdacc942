""".ci/install-promtool, the step of .ci/run that provides promtool for these checks, run against
stand-in commands on a PATH of its own (the real apt-get would change the machine): it does nothing
when promtool is there, installs Debian's prometheus package with apt-get when it is not, and
stops with a sentence where there is no apt-get."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from tests.deploy.conftest import REPO_ROOT

SCRIPT = REPO_ROOT / ".ci" / "install-promtool"


def _command(folder: Path, name: str, body: str) -> None:
    path = folder / name
    path.write_text(f"#!/bin/sh\n{body}\n")
    path.chmod(0o755)


def _run(path: Path) -> subprocess.CompletedProcess[str]:
    bash = shutil.which("bash")
    assert bash is not None
    return subprocess.run(
        [bash, str(SCRIPT)], env={"PATH": str(path)}, capture_output=True, text=True, timeout=30
    )


def _path(tmp_path: Path) -> Path:
    """A PATH folder with what the script may use besides the stand-ins: ``id`` and ``sudo``."""
    folder = tmp_path / "bin"
    folder.mkdir()
    identity = shutil.which("id")
    assert identity is not None
    (folder / "id").symlink_to(identity)
    _command(folder, "sudo", 'exec "$@"')
    return folder


def test_nothing_to_do_when_promtool_is_installed(tmp_path: Path) -> None:
    folder = _path(tmp_path)
    _command(folder, "promtool", "exit 0")
    _command(folder, "apt-get", f'echo "$@" >> {tmp_path / "apt.log"}')
    result = _run(folder)
    assert result.returncode == 0, result.stderr
    assert not (tmp_path / "apt.log").exists()


def test_installs_debians_prometheus_package_with_apt_get(tmp_path: Path) -> None:
    folder = _path(tmp_path)
    _command(folder, "apt-get", f'echo "$@" >> {tmp_path / "apt.log"}')
    result = _run(folder)
    assert result.returncode == 0, result.stderr
    update, install = (tmp_path / "apt.log").read_text().splitlines()
    assert update.split()[0] == "update"
    assert install.split()[0] == "install" and install.split()[-1] == "prometheus"
    assert "-y" in install.split()


def test_without_apt_get_it_stops_saying_what_to_install(tmp_path: Path) -> None:
    result = _run(_path(tmp_path))
    assert result.returncode == 1
    message = " ".join(result.stderr.split())
    assert "promtool is not installed" in message and "no apt-get" in message
    assert "put it on PATH" in message
