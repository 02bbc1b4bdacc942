"""The package as a gateway-only user installs it: the wheel built from exactly what the gateway
image builds from (docker/gateway.Dockerfile's build stage: no ``training/``), installed into a
fresh venv, run from a folder outside the checkout.

The venv reaches its dependencies through a ``.pth`` line naming this interpreter's
site-packages (no network, no second copy); a line added that way does not run the ``.pth`` files
in there, so the checkout's editable install stays out, and ``import service`` finds the wheel.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from dataclasses import dataclass
from pathlib import Path

import httpx2
import pytest

from service.settings import DEFAULT_MODEL_REPOSITORY
from testing.gateway_process import gateway_process
from testing.studies import multipart_files, write_synthetic_study
from tests.deploy.conftest import DOCKER, REPO_ROOT, run
from tests.deploy.dockerfile import copy_sources, dockerignore_patterns, excluded, stages

GATEWAY_BUILD = stages(DOCKER / "gateway.Dockerfile")["build"]


@dataclass(frozen=True)
class Installed:
    wheel: Path
    build_log: str
    bin: Path  # the venv's bin folder: python, headct
    cwd: Path  # an empty folder outside the checkout
    env: dict[str, str]  # no PYTHONPATH, no HEADCT_* variables


def _build_context(target: Path) -> list[str]:
    """Copy what the gateway's build stage COPYs, as the build context sends it."""
    ignore = dockerignore_patterns(REPO_ROOT / ".dockerignore")
    sources = [s for i in GATEWAY_BUILD.all("COPY") for s in copy_sources(i)]
    for source in sources:
        path = REPO_ROOT / source
        files = [p for p in path.rglob("*") if p.is_file()] if path.is_dir() else [path]
        for file in files:
            relative = file.relative_to(REPO_ROOT).as_posix()
            if not excluded(relative, ignore):
                (target / relative).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(file, target / relative)
    return sources


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Installed:
    root = tmp_path_factory.mktemp("wheel")
    source = root / "source"
    sources = _build_context(source)
    assert "training/" not in sources and "service/" in sources
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check"]
    build = run(
        [*pip, "wheel", "-v", "--no-deps", "--no-build-isolation", "-w", str(root), str(source)]
    )
    assert build.returncode == 0, build.stdout[-4000:] + build.stderr[-4000:]
    (wheel,) = root.glob("headct_triage-*.whl")
    venv = root / "venv"
    assert run([sys.executable, "-m", "venv", "--without-pip", str(venv)]).returncode == 0
    python = venv / "bin" / "python"
    purelib = run([str(python), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"])
    (Path(purelib.stdout.strip()) / "headct-dependencies.pth").write_text(
        sysconfig.get_path("purelib") + "\n"
    )
    install = run([*pip, "--python", str(python), "install", "--no-deps", "--no-index", str(wheel)])
    assert install.returncode == 0, install.stdout + install.stderr
    cwd = root / "elsewhere"
    cwd.mkdir()
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH" and not k.startswith("HEADCT_")}
    env.update(PATH=f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}", COLUMNS="200")
    return Installed(wheel, build.stdout + build.stderr, venv / "bin", cwd, env)


def _run(installed: Installed, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return run(list(args), cwd=installed.cwd, env={**installed.env, **env})


def test_the_wheel_builds_clean_with_an_spdx_license(installed: Installed) -> None:
    # setuptools warns (and from 2027 fails) on a `project.license` table or a license file it
    # cannot find; both would show in the verbose build log.
    assert not re.search(r"deprecat|did not match", installed.build_log, re.IGNORECASE)
    with zipfile.ZipFile(installed.wheel) as wheel:
        names = wheel.namelist()
        (metadata,) = [n for n in names if n.endswith(".dist-info/METADATA")]
        (entry_points,) = [n for n in names if n.endswith(".dist-info/entry_points.txt")]
        assert "License-Expression: Apache-2.0" in wheel.read(metadata).decode()
        assert "headct = service.cli:main" in wheel.read(entry_points).decode()
    assert any(n.endswith(".dist-info/licenses/LICENSE") for n in names)
    assert not [n for n in names if n.startswith("training/")], "the gateway build has no training"
    viewer = {n.removeprefix("service/viewer/static/") for n in names if "/static/" in n}
    assert {"index.html", "viewer.js", "viewer.css"} <= viewer, "the viewer is package data"


def test_it_runs_from_the_wheel_not_the_checkout(installed: Installed) -> None:
    where = _run(installed, "python", "-c", "import service; print(service.__file__)")
    assert where.returncode == 0, where.stderr
    assert Path(where.stdout.strip()).is_relative_to(installed.bin.parent), where.stdout
    assert _run(installed, "python", "-c", "import training").returncode == 1


def test_help_lists_the_serving_commands_and_how_to_get_the_training_ones(
    installed: Installed,
) -> None:
    result = _run(installed, "headct", "--help")
    assert result.returncode == 0, result.stderr
    commands = re.findall(r"^│ (\w+) ", result.stdout, re.MULTILINE)
    assert commands == ["inspect", "serve", "listen", "triage", "batch"], result.stdout
    assert "pip install -e '.[train]'" in " ".join(result.stdout.split())


def test_without_a_model_repository_the_gateway_refuses_to_start(installed: Installed) -> None:
    result = _run(installed, "headct", "serve", "--port", "1")
    assert result.returncode == 2
    assert "HEADCT_MODEL_REPOSITORY is not set" in result.stderr, result.stderr


def test_the_installed_gateway_serves_the_demo_model(installed: Installed, tmp_path: Path) -> None:
    """As the embedded image does: the wheel plus HEADCT_MODEL_REPOSITORY; the docs' assets come
    from the installed packages."""
    study = write_synthetic_study(tmp_path / "study", seed=5, slices=20)
    env = {**installed.env, "HEADCT_MODEL_REPOSITORY": str(DEFAULT_MODEL_REPOSITORY)}
    with gateway_process(
        ["headct", "serve"], log=tmp_path / "gateway.log", env=env, cwd=installed.cwd
    ) as gateway:
        docs = httpx2.get(gateway.url + "/docs", timeout=10)
        assert docs.status_code == 200
        for asset in re.findall(r'(?:src|href)="([^"]+)"', docs.text):
            assert httpx2.get(gateway.url + asset, timeout=10).status_code == 200, asset
        triaged = httpx2.post(gateway.url + "/v1/triage", files=multipart_files(study), timeout=60)
        assert triaged.status_code == 200, triaged.text
        model = triaged.json()["model"]
        # the viewer's page and modules come from the installed package, its images from Pillow
        page = httpx2.get(gateway.url + "/viewer/", timeout=10)
        assert page.status_code == 200 and 'src="viewer.js"' in page.text
        for module in ("viewer.js", "api.js", "upload.js", "findings.js", "slices.js", "router.js"):
            assert httpx2.get(f"{gateway.url}/viewer/{module}", timeout=10).status_code == 200
        uid = triaged.json()["study_uid"]
        sheet = httpx2.get(f"{gateway.url}/v1/studies/{uid}/slices/brain.png", timeout=30)
        assert sheet.status_code == 200 and sheet.content.startswith(b"\x89PNG")
    folders = (DEFAULT_MODEL_REPOSITORY / model["name"]).iterdir()
    versions = [int(f.name) for f in folders if f.name.isdigit()]
    assert model["version"] == max(versions)
