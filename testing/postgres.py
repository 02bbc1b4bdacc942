"""A real PostgreSQL server for the study store's tests: Debian's ``postgresql`` package
(``.ci/run`` installs it), a throw-away cluster on a free loopback port, stopped and removed
afterwards.

PostgreSQL refuses to run as root: as root, the cluster belongs to the package's ``postgres``
user and its commands run through ``runuser``.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from testing.gateway_process import free_port

USER = "headct"


def postgres_bin() -> Path:
    """The newest installed server's bin folder; raises naming the package if there is none."""
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"), key=lambda p: p.parts[-3])
    if not found:
        raise FileNotFoundError(
            "PostgreSQL is not installed: apt-get install postgresql (.ci/run does)"
        )
    return found[-1].parent


def _as_owner(command: list[str]) -> list[str]:
    return ["runuser", "-u", "postgres", "--", *command] if os.geteuid() == 0 else command


@contextmanager
def postgres_server() -> Iterator[str]:
    """A running server; yields its SQLAlchemy URL (user ``headct``, database ``postgres``)."""
    binaries = postgres_bin()
    folder = Path(tempfile.mkdtemp(prefix="headct-postgres-"))
    if os.geteuid() == 0:
        shutil.chown(folder, "postgres")
    data, log = folder / "data", folder / "server.log"
    port = free_port()
    process: subprocess.Popen[bytes] | None = None
    try:
        subprocess.run(
            _as_owner([str(binaries / "initdb"), "-D", str(data), "-U", USER, "-A", "trust"]),
            check=True,
            capture_output=True,
        )
        with log.open("wb") as output:
            process = subprocess.Popen(
                _as_owner(
                    [
                        str(binaries / "postgres"),
                        "-D", str(data),
                        "-p", str(port),
                        "-k", str(folder),
                        "-c", "listen_addresses=127.0.0.1",
                        "-c", "fsync=off",
                    ]
                ),
                stdout=output,
                stderr=subprocess.STDOUT,
            )  # fmt: skip
        deadline = time.monotonic() + 30
        ready = [str(binaries / "pg_isready"), "-h", "127.0.0.1", "-p", str(port), "-U", USER]
        while subprocess.run(ready, capture_output=True).returncode != 0:
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"PostgreSQL did not start:\n{log.read_text()}")
            time.sleep(0.2)
        yield f"postgresql+psycopg://{USER}@127.0.0.1:{port}/postgres"
    finally:
        if process is not None and process.poll() is None:
            process.terminate()  # smart shutdown; a fast one follows if it lingers
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        shutil.rmtree(folder, ignore_errors=True)
