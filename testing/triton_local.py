"""A real Triton Inference Server for tests: the one bundled in the ``nvidia-pytriton`` wheel.

It runs from the Triton venv (``requirements/triton-cpu.txt``; ``.ci/run`` creates it), found via
``HEADCT_TRITON_VENV`` (default ``<repo>/.venv-triton``). As docs/ENVIRONMENT.md describes: the
python backend stub for this Python is copied into the wheel's ``backends/python/``, the wheel's
bundled libraries go on ``LD_LIBRARY_PATH``, and only the named models load (explicit model
control: the wheel has no onnxruntime backend, so ``headct_molre`` itself cannot load there).

A python-backend model whose ``EXECUTION_ENV_PATH`` does not resolve to this venv (a repository
written with another path, or a venv elsewhere) is served from an overlay: a temporary repository
of links to the real model folders, with that one parameter set to the venv's absolute path.

    with triton_server(repository, ["headct_molre_cpu"]) as server:
        client = tritonclient.http.InferenceServerClient(server.http_url)
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.request
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
ENV_PARAMETER = "EXECUTION_ENV_PATH"
MODEL_DIR_VARIABLE = "$$TRITON_MODEL_DIRECTORY"


class TritonStartError(RuntimeError):
    """The server did not become ready; the message ends with the tail of its log."""


def triton_venv() -> Path:
    return Path(os.environ.get("HEADCT_TRITON_VENV", REPO_ROOT / ".venv-triton")).absolute()


def _pytriton_root(venv: Path) -> Path:
    found = sorted(venv.glob("lib/python3*/site-packages/pytriton"))
    if not found:
        raise TritonStartError(
            f"no nvidia-pytriton in the Triton venv {venv}: create it with "
            f"python3.11 -m venv {venv} && {venv}/bin/pip install -r requirements/triton-cpu.txt "
            "(.ci/run does this), or point HEADCT_TRITON_VENV at one"
        )
    return found[0]


def _python_version(pytriton_root: Path) -> str:
    """The venv's Python version, from its site-packages path (lib/python3.11/...)."""
    return pytriton_root.parent.parent.name.removeprefix("python")


def _python_libdir(venv: Path) -> str:
    """Where the venv's Python keeps libpython, which the stub embeds (same build, same stdlib)."""
    command = [
        str(venv / "bin" / "python"),
        "-c",
        "import sysconfig as s; print(s.get_config_var('LIBDIR'))",
    ]
    return subprocess.run(command, capture_output=True, text=True, check=True).stdout.strip()


def _install_stub(server_root: Path, version: str) -> None:
    """Put the python backend stub for ``version`` where the backend looks (idempotent)."""
    source = server_root / "python_backend_stubs" / version / "triton_python_backend_stub"
    target = server_root / "backends" / "python" / "triton_python_backend_stub"
    if not source.is_file():
        raise TritonStartError(f"the wheel has no python backend stub for Python {version}")
    if target.is_file() and target.stat().st_size == source.stat().st_size:
        return
    partial = target.with_name(f".stub.{os.getpid()}")
    shutil.copy2(source, partial)
    os.replace(partial, target)


def _free_ports(count: int) -> list[int]:
    sockets = []
    try:
        for _ in range(count):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(("127.0.0.1", 0))
            sockets.append(s)
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def _env_parameter(config: Path) -> str | None:
    """The EXECUTION_ENV_PATH string value in a config.pbtxt, if any."""
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2

    parsed = text_format.Parse(config.read_text(), model_config_pb2.ModelConfig())
    return (
        parsed.parameters[ENV_PARAMETER].string_value
        if ENV_PARAMETER in parsed.parameters
        else None
    )


def _resolves_to(value: str, model_dir: Path, venv: Path) -> bool:
    path = Path(value.replace(MODEL_DIR_VARIABLE, str(model_dir)))
    return path.is_dir() and path.resolve() == venv.resolve()


def serving_repository(repository: Path, models: Sequence[str], venv: Path, scratch: Path) -> Path:
    """``repository`` itself, or an overlay of it whose python models use ``venv``."""
    stale = [
        name
        for name in models
        if (value := _env_parameter(repository / name / "config.pbtxt")) is not None
        and not _resolves_to(value, repository / name, venv)
    ]
    if not stale:
        return repository
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2

    overlay = scratch / "repository"
    overlay.mkdir()
    for entry in repository.iterdir():
        if entry.name not in stale:
            (overlay / entry.name).symlink_to(entry.resolve())
            continue
        (overlay / entry.name).mkdir()
        for item in entry.iterdir():
            if item.name != "config.pbtxt":
                (overlay / entry.name / item.name).symlink_to(item.resolve())
        config = text_format.Parse(
            (entry / "config.pbtxt").read_text(), model_config_pb2.ModelConfig()
        )
        config.parameters[ENV_PARAMETER].string_value = str(venv)
        (overlay / entry.name / "config.pbtxt").write_text(text_format.MessageToString(config))
    return overlay


@dataclass
class TritonServer:
    process: subprocess.Popen[bytes]
    http_port: int
    grpc_port: int
    metrics_port: int
    log_path: Path
    repository: Path

    @property
    def http_url(self) -> str:
        return f"127.0.0.1:{self.http_port}"

    def log_tail(self, lines: int = 60) -> str:
        text = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
        return "\n".join(text.splitlines()[-lines:])

    def running(self) -> bool:
        return self.process.poll() is None

    def ready(self) -> bool:
        try:
            url = f"http://{self.http_url}/v2/health/ready"
            with urllib.request.urlopen(url, timeout=1) as response:
                return response.status == 200
        except OSError:
            return False


def _stop(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM the server's process group (it and its python stubs), SIGKILL if it lingers."""
    if process.poll() is not None:
        return
    for sig, wait in ((signal.SIGTERM, 15), (signal.SIGKILL, 5)):
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            return
        try:
            process.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue


@contextmanager
def triton_server(
    repository: Path,
    models: Sequence[str] = ("headct_molre_cpu",),
    *,
    venv: Path | None = None,
    startup_timeout_s: float = 60.0,
    log_dir: Path | None = None,
) -> Iterator[TritonServer]:
    """Start the bundled Triton on ``repository`` with only ``models`` loaded, wait until it is
    ready (models loaded and warmed up), yield it, and stop it on exit. The server log goes to
    ``log_dir`` (kept) or a temporary folder; a failed start raises with its tail."""
    venv = venv or triton_venv()
    root = _pytriton_root(venv)
    server_root = root / "tritonserver"
    _install_stub(server_root, _python_version(root))
    with ExitStack() as stack:
        scratch = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="headct-triton-")))
        served = serving_repository(repository, models, venv, scratch)
        http, grpc, metrics = _free_ports(3)
        command = [
            str(server_root / "bin" / "tritonserver"),
            f"--model-repository={served}",
            f"--backend-directory={server_root / 'backends'}",
            "--model-control-mode=explicit",
            *(f"--load-model={name}" for name in models),
            "--http-address=127.0.0.1",
            f"--http-port={http}",
            "--grpc-address=127.0.0.1",
            f"--grpc-port={grpc}",
            "--metrics-address=127.0.0.1",
            f"--metrics-port={metrics}",
            "--allow-gpu-metrics=false",
            "--exit-timeout-secs=5",
            "--log-verbose=0",
        ]
        env = dict(os.environ)
        libs = str(root.parent / "nvidia_pytriton.libs")
        paths = [libs, _python_libdir(venv), env.get("LD_LIBRARY_PATH")]
        env["LD_LIBRARY_PATH"] = ":".join(filter(None, paths))
        env["PATH"] = f"{venv / 'bin'}:{env.get('PATH', '')}"
        log_path = (log_dir or scratch) / "tritonserver.log"
        log = stack.enter_context(log_path.open("wb"))
        process = subprocess.Popen(
            command, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True
        )
        stack.callback(_stop, process)
        server = TritonServer(process, http, grpc, metrics, log_path, served)
        deadline = time.monotonic() + startup_timeout_s
        while not server.ready():
            if not server.running() or time.monotonic() > deadline:
                reason = (
                    f"exited with {process.returncode}"
                    if not server.running()
                    else f"not ready after {startup_timeout_s:g} s"
                )
                raise TritonStartError(f"tritonserver {reason}; log:\n{server.log_tail()}")
            time.sleep(0.2)
        yield server
