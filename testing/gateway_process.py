"""A real gateway process: a ``headct serve`` command line run on a free port, handed over once its
``/readyz`` answers 200, stopped with SIGTERM (uvicorn's graceful shutdown) afterwards."""

from __future__ import annotations

import signal
import socket
import subprocess
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx2


@dataclass(frozen=True)
class GatewayProcess:
    url: str
    process: subprocess.Popen[bytes]
    log: Path  # the server's stderr (its log lines)


class GatewayStartError(RuntimeError):
    """The gateway exited, or was not ready in time; the message ends with its log."""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def gateway_process(
    command: list[str],
    *,
    log: Path,
    env: Mapping[str, str],
    cwd: Path,
    timeout_s: float = 60.0,
) -> Iterator[GatewayProcess]:
    """Run ``command`` (``headct serve`` and its options; ``--port`` is added) until the block
    ends; raises ``GatewayStartError`` if it exits or is not ready within ``timeout_s``."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    with log.open("wb") as stderr:
        process = subprocess.Popen(
            [*command, "--port", str(port)],
            cwd=cwd,
            env=dict(env),
            stdout=subprocess.DEVNULL,
            stderr=stderr,
        )
    try:
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                if httpx2.get(url + "/readyz", timeout=1).status_code == 200:
                    break
            except httpx2.HTTPError:
                pass
            if process.poll() is not None or time.monotonic() > deadline:
                raise GatewayStartError(
                    f"the gateway did not start ({' '.join(command)}):\n{log.read_text()}"
                )
            time.sleep(0.1)
        yield GatewayProcess(url, process, log)
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
