"""podman for the image tests: builds as the README's deploy section does (Docker's image format,
which keeps the HEALTHCHECK, and the host's network, through which the package registries are
reached), containers that are always removed, and the gateway's HTTP API from outside.

podman reads ``CONTAINERS_CONF``; unset, it is the repository's ``docker/podman/containers.conf``
(runc, cgroupfs, no default ulimits: what this project's CI machines need, see that file).
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx2

REPO_ROOT = Path(__file__).resolve().parents[2]
CONTAINERS_CONF = REPO_ROOT / "docker" / "podman" / "containers.conf"
LOCAL_BASE = REPO_ROOT / "docker" / "build-local-base.sh"
BUILD_TIMEOUT_S = 1800
BUILD_ARGS = ("--format=docker", "--network=host")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def podman_env() -> dict[str, str]:
    return {"CONTAINERS_CONF": str(CONTAINERS_CONF), **os.environ}


def _tail(text: str, lines: int = 40) -> str:
    return "\n".join(text.splitlines()[-lines:])


@dataclass(frozen=True)
class Podman:
    binary: str

    def __call__(
        self, *args: str, timeout: float = 120, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            [self.binary, *args],
            cwd=REPO_ROOT,
            env=podman_env(),
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        if check and result.returncode != 0:
            raise AssertionError(
                f"podman {' '.join(args)} exited with {result.returncode}:\n"
                f"{_tail(result.stdout)}\n{_tail(result.stderr)}"
            )
        return result

    def build(
        self,
        tag: str,
        dockerfile: str,
        *,
        target: str | None = None,
        build_args: dict[str, str] | None = None,
    ) -> str:
        """``podman build --format docker --network host -f DOCKERFILE [--target T] -t TAG .``
        from the repository root (podman's default OCI format would drop the HEALTHCHECK)."""
        args = ["build", *BUILD_ARGS, "-f", dockerfile, "-t", tag]
        if target:
            args += ["--target", target]
        for key, value in (build_args or {}).items():
            args += ["--build-arg", f"{key}={value}"]
        # One build of a tag at a time (pytest-xdist workers): the next one finds it cached.
        lock = Path(tempfile.gettempdir()) / f"headct-build-{tag.replace('/', '_')}.lock"
        with lock.open("w") as held:
            fcntl.flock(held, fcntl.LOCK_EX)
            self(*args, ".", timeout=BUILD_TIMEOUT_S)
        return tag

    def inspect(self, name: str, kind: str = "container") -> dict[str, Any]:
        found: list[dict[str, Any]] = json.loads(self(kind, "inspect", name).stdout)
        return found[0]

    def image_size(self, tag: str) -> int:
        return int(self.inspect(tag, "image")["Size"])

    def local_base(self, name: str) -> str:
        """The image ``docker/build-local-base.sh`` makes for ``name``, made if it is missing
        (the script skips what exists)."""
        script = ["bash", str(LOCAL_BASE)]
        run = subprocess.run(
            [*script, name],
            cwd=REPO_ROOT,
            env=podman_env(),
            capture_output=True,
            text=True,
            timeout=BUILD_TIMEOUT_S,
        )
        assert run.returncode == 0, f"{LOCAL_BASE.name} {name}:\n{_tail(run.stderr)}"
        named = subprocess.run(
            [*script, "--name", name], capture_output=True, text=True, check=True
        )
        return named.stdout.strip()

    @contextmanager
    def container(
        self, image: str, run_args: Sequence[str] = (), command: Sequence[str] = ()
    ) -> Iterator[Container]:
        """``podman run -d`` with ``run_args``; the container is removed on exit, whatever
        happened."""
        name = f"headct-test-{uuid.uuid4().hex[:10]}"
        try:
            self("run", "--detach", "--name", name, *run_args, image, *command)
            yield Container(self, name)
        finally:
            self("rm", "--force", "--time", "0", name, check=False)


@dataclass(frozen=True)
class Container:
    podman: Podman
    name: str

    def state(self) -> dict[str, Any]:
        state: dict[str, Any] = self.podman.inspect(self.name)["State"]
        return state

    def logs(self) -> str:
        result = self.podman("logs", self.name, check=False)
        return _tail(result.stdout + result.stderr, 60)

    def exec(self, *command: str) -> subprocess.CompletedProcess[str]:
        return self.podman("exec", self.name, *command, check=False)

    def wait_ready(self, url: str, timeout_s: float = 120) -> httpx2.Response:
        """Poll ``url`` (the gateway's /readyz) until it answers 200; fail with the logs if the
        container stops or time runs out."""
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                response = httpx2.get(url, timeout=2)
                if response.status_code == 200:
                    return response
            except httpx2.HTTPError:
                pass
            running = self.state()["Running"]
            if not running or time.monotonic() > deadline:
                why = "stopped" if not running else f"not ready after {timeout_s:g} s"
                raise AssertionError(f"{url}: container {why}; logs:\n{self.logs()}")
            time.sleep(0.5)
