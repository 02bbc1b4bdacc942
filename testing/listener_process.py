"""A real ``headct listen`` process: the command line run on a free (or given) port, handed over
once it answers a C-ECHO, stopped with SIGTERM afterwards (or killed by the test, then restarted
on the same port and data folder)."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from pynetdicom import AE
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

from testing.gateway_process import free_port, served_process


@dataclass(frozen=True)
class ListenerProcess:
    port: int
    ae_title: str
    process: subprocess.Popen[bytes]
    log: Path  # the listener's stderr (its log lines)


class ListenerStartError(RuntimeError):
    """The listener exited, or did not answer a C-ECHO in time; the message ends with its log."""


def echo(port: int, *, called_ae: str, calling_ae: str) -> bool:
    """Whether a C-ECHO to 127.0.0.1:port succeeds."""
    ae = AE(ae_title=calling_ae)
    ae.add_requested_context(Verification)
    ae.acse_timeout = ae.network_timeout = 2
    association = ae.associate("127.0.0.1", port, ae_title=called_ae)
    if not association.is_established:
        return False
    try:
        return bool(association.send_c_echo().get("Status") == 0)
    finally:
        association.release()


@contextmanager
def listener_process(
    command: list[str],
    *,
    log: Path,
    env: Mapping[str, str],
    cwd: Path,
    ae_title: str,
    calling_ae: str,
    port: int | None = None,
    timeout_s: float = 60.0,
) -> Iterator[ListenerProcess]:
    """Run ``command`` (``headct listen`` and its options; ``--port`` is added) until the block
    ends; ready once a C-ECHO from ``calling_ae`` succeeds. Appends to ``log``."""
    port = port or free_port()
    with served_process(
        command,
        port=port,
        ready=lambda: echo(port, called_ae=ae_title, calling_ae=calling_ae),
        log=log,
        env=env,
        cwd=cwd,
        timeout_s=timeout_s,
        poll_s=0.2,
        what="listener",
        error=ListenerStartError,
    ) as process:
        yield ListenerProcess(port, ae_title, process, log)
