"""A real gateway process: a ``headct serve`` command line run on a free port, handed over once its
``/readyz`` answers 200, stopped with SIGTERM (uvicorn's graceful shutdown) afterwards."""

from __future__ import annotations

import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterator, Mapping
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
def served_process(
    command: list[str],
    *,
    port: int,
    ready: Callable[[], bool],
    log: Path,
    env: Mapping[str, str],
    cwd: Path,
    timeout_s: float,
    poll_s: float,
    what: str,
    error: type[RuntimeError],
) -> Iterator[subprocess.Popen[bytes]]:
    """Run ``command`` with ``--port PORT`` added (stderr appended to ``log``) until the block
    ends, handed over once ``ready()``; raises ``error`` (ending with the log) if it exits or is
    not ready within ``timeout_s``. Stopped with SIGTERM (a graceful shutdown), killed after
    15 s. The one lifecycle of the gateway and listener harnesses."""
    with log.open("ab") as stderr:
        process = subprocess.Popen(
            [*command, "--port", str(port)],
            cwd=cwd,
            env=dict(env),
            stdout=subprocess.DEVNULL,
            stderr=stderr,
        )
    try:
        deadline = time.monotonic() + timeout_s
        while not ready():
            if process.poll() is not None or time.monotonic() > deadline:
                raise error(f"the {what} did not start ({' '.join(command)}):\n{log.read_text()}")
            time.sleep(poll_s)
        yield process
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


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

    def ready() -> bool:
        try:
            return httpx2.get(url + "/readyz", timeout=1).status_code == 200
        except httpx2.HTTPError:
            return False

    log.write_bytes(b"")  # a fresh log for each gateway
    with served_process(
        command,
        port=port,
        ready=ready,
        log=log,
        env=env,
        cwd=cwd,
        timeout_s=timeout_s,
        poll_s=0.1,
        what="gateway",
        error=GatewayStartError,
    ) as process:
        yield GatewayProcess(url, process, log)
