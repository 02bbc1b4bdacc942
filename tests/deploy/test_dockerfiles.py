"""The images, checked without an engine: every COPY source is in the repository and in the build
context, base images are pinned, the gateway has no torch and runs as a non-root user with a
health check, Triton uses explicit model control with an environment the python backend can load,
and training starts through torchrun."""

from __future__ import annotations

import os
import re
import subprocess
import tomllib
from pathlib import Path, PurePosixPath

import pytest
from packaging.requirements import Requirement

from tests.deploy.conftest import DOCKER, REPO_ROOT
from tests.deploy.dockerfile import (
    Stage,
    copy_sources,
    dockerignore_patterns,
    excluded,
    instructions,
    stages,
)
from training.repository import DEFAULT_EXECUTION_ENV

DOCKERFILES = sorted(DOCKER.glob("*.Dockerfile"))
IGNORE = dockerignore_patterns(REPO_ROOT / ".dockerignore")


def _tracked(path: str) -> list[str]:
    """Files at or under ``path`` that git tracks or would track (not ignored): what a clean
    clone, and so CI's image build, has."""
    result = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard", "--", path],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        check=True,
    )
    return result.stdout.split()


def test_the_three_images_exist() -> None:
    assert {p.name for p in DOCKERFILES} == {
        "gateway.Dockerfile",
        "triton.Dockerfile",
        "training.Dockerfile",
    }


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_copy_sources_exist_and_reach_the_build_context(dockerfile: Path) -> None:
    copied = [
        source
        for stage in stages(dockerfile).values()
        for instruction in stage.all("COPY") + stage.all("ADD")
        for source in copy_sources(instruction)
    ]
    assert copied, f"{dockerfile.name} copies nothing from the context"
    for source in copied:
        assert (REPO_ROOT / source).exists(), f"{dockerfile.name}: COPY {source}: no such path"
        tracked = _tracked(source)
        assert tracked, f"{dockerfile.name}: COPY {source}: ignored by git, so not in a clean clone"
        assert not excluded(source, IGNORE), f"{dockerfile.name}: .dockerignore drops {source}"
        dropped = [f for f in tracked if excluded(f, IGNORE) and not f.endswith(".pyc")]
        assert not dropped, f"{dockerfile.name}: .dockerignore drops {dropped[:5]}"


def test_dockerignore_keeps_the_context_small() -> None:
    for heavy in (".git/config", ".venv/bin/python", ".venv-triton/bin/python", "tests/x.py"):
        assert excluded(heavy, IGNORE), heavy
    assert excluded("service/__pycache__/app.cpython-311.pyc", IGNORE)
    assert not excluded("service/app.py", IGNORE)


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_base_images_are_pinned(dockerfile: Path) -> None:
    named = {s.name for s in stages(dockerfile).values() if s.name}
    for stage in stages(dockerfile).values():
        if stage.base in named:
            continue
        image, _, tag = stage.base.rpartition(":")
        assert image and tag and tag != "latest" and "$" not in stage.base, stage.base


def _final(dockerfile: Path, target: str | None = None) -> list[Stage]:
    """The stages an image built for ``target`` (default: the last stage) runs through."""
    by_name = stages(dockerfile)
    chain = [by_name[target] if target else list(by_name.values())[-1]]
    while chain[-1].base in by_name:
        chain.append(by_name[chain[-1].base])
    return chain


def _last(chain: list[Stage], keyword: str) -> str | None:
    for stage in chain:
        found = stage.all(keyword)
        if found:
            return found[-1].arguments
    return None


@pytest.mark.parametrize("target", ["runtime", "embedded"])
def test_gateway_image(target: str) -> None:
    dockerfile = DOCKER / "gateway.Dockerfile"
    chain = _final(dockerfile, target)
    user = _last(chain, "USER")
    assert user is not None and user.split(":")[0] not in ("0", "root")
    assert user.split(":")[0].isdigit(), "a numeric user lets Kubernetes verify runAsNonRoot"
    healthcheck = _last(chain, "HEALTHCHECK")
    assert healthcheck is not None and "/healthz" in healthcheck
    assert "headct" in (_last(chain, "CMD") or "") and "serve" in (_last(chain, "CMD") or "")
    text = dockerfile.read_text()
    assert "[train" not in text and "torch==" not in text, "the gateway image installs no torch"
    core = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    heavy = {"torch", "torchvision", "transformers"}
    assert not heavy & {Requirement(r).name for r in core}, "`pip install .` would bring torch"
    copies = " ".join(i.arguments for s in chain for i in s.all("COPY"))
    assert ("model_repository" in copies) == (target == "embedded")


def test_only_the_batch_image_installs_an_extra_and_it_is_pyarrow_alone() -> None:
    """The gateway images stay under their size budget: beside the `postgres` extra every image
    has (the study store's driver for several replicas), the build installs the `batch` extra
    (pyarrow, for Parquet) only when HEADCT_EXTRAS asks, as the batch image's build does."""
    build = stages(DOCKER / "gateway.Dockerfile")["build"]
    (extras,) = [i.arguments for i in build.all("ARG") if i.arguments.startswith("HEADCT_EXTRAS")]
    assert extras == 'HEADCT_EXTRAS=""'
    runs = " ".join(i.arguments for i in build.all("RUN"))
    assert '".[postgres${HEADCT_EXTRAS:+,$HEADCT_EXTRAS}]"' in runs
    optional = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]
    assert [Requirement(r).name for r in optional["optional-dependencies"]["batch"]] == ["pyarrow"]
    text = (DOCKER / "gateway.Dockerfile").read_text()
    assert "--build-arg HEADCT_EXTRAS=batch" in text and "headct-batch:0.1.0-batch" in text
    job = (REPO_ROOT / "k8s" / "components" / "batch" / "kustomization.yaml").read_text()
    assert "name: headct-batch\n    newTag: 0.1.0-batch" in job


def test_gateway_image_builds_the_serving_package_alone() -> None:
    """No training/: `headct` lives in service.cli (tests/deploy/test_wheel.py installs exactly
    this build and runs it)."""
    build = stages(DOCKER / "gateway.Dockerfile")["build"]
    sources = {s.rstrip("/") for i in build.all("COPY") for s in copy_sources(i)}
    assert "service" in sources and "training" not in sources


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_package_builds_get_the_files_pyproject_names(dockerfile: Path) -> None:
    """Wherever pyproject.toml is copied, so are its readme and license files: setuptools needs
    the readme, and warns (from 2027 fails) on a license file it cannot find."""
    project = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]
    named = {project["readme"], *project["license-files"]}
    for stage in stages(dockerfile).values():
        copied = {s for i in stage.all("COPY") for s in copy_sources(i)}
        if "pyproject.toml" in copied:
            assert named <= copied, f"{dockerfile.name}: copies pyproject.toml without {named}"


@pytest.mark.parametrize(
    ("image", "manifest"),
    [
        ("gateway.Dockerfile", "base/gateway/deployment.yaml"),
        ("triton.Dockerfile", "components/triton/deployment.yaml"),
        ("gateway.Dockerfile", "components/batch/job.yaml"),
        ("gateway.Dockerfile", "components/batch/merge-job.yaml"),
    ],
)
def test_image_user_matches_the_kubernetes_manifest(image: str, manifest: str) -> None:
    user = _last(_final(DOCKER / image), "USER")
    assert user is not None
    uid, _, gid = user.partition(":")
    text = (REPO_ROOT / "k8s" / manifest).read_text()
    assert f"runAsUser: {uid}" in text and f"runAsGroup: {gid}" in text


def test_triton_image() -> None:
    dockerfile = DOCKER / "triton.Dockerfile"
    (stage,) = stages(dockerfile).values()
    assert re.fullmatch(r"nvcr\.io/nvidia/tritonserver:\d{2}\.\d{2}-py3", stage.base), stage.base
    assert "HEADCT_MODEL_REPOSITORY=/opt/headct/model_repository" in dockerfile.read_text()
    # headct_molre_cpu's config names its execution environment relative to its own folder:
    # that path, seen from the image's repository, is the venv the image builds.
    model_dir = PurePosixPath("/opt/headct/model_repository/headct_molre_cpu")
    env_path = DEFAULT_EXECUTION_ENV.replace("$$TRITON_MODEL_DIRECTORY", str(model_dir))
    resolved = os.path.normpath(env_path)
    assert f"python3 -m venv {resolved}" in " ".join(i.arguments for i in stage.all("RUN"))
    requirements = [
        Requirement(line)
        for line in (DOCKER / "triton" / "python-backend.txt").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    pins = {r.name: r.specifier for r in requirements}
    assert not pins["numpy"].contains("2.0.0") and pins["numpy"].contains("1.26.4")
    assert "onnxruntime" in pins
    user = _last([stage], "USER")
    assert user is not None and user.split(":")[0] not in ("root", "0")
    assert "curl" in " ".join(i.arguments for i in stage.all("RUN")), "the health check uses curl"


def test_triton_serve_script_uses_explicit_model_control(tmp_path: Path) -> None:
    """serve.sh run against a stand-in tritonserver that prints the arguments it was given."""
    fake = tmp_path / "tritonserver"
    fake.write_text('#!/bin/sh\nfor a in "$@"; do echo "$a"; done\n')
    fake.chmod(0o755)
    env = {
        "PATH": f"{tmp_path}:/usr/bin:/bin",
        "HEADCT_TRITON_MODELS": "headct_molre,headct_molre_cpu",
        "HEADCT_MODEL_REPOSITORY": "/models",
    }
    result = subprocess.run(
        ["bash", str(DOCKER / "triton" / "serve.sh"), "--log-verbose=1"],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    args = result.stdout.split()
    assert "--model-control-mode=explicit" in args
    assert "--model-repository=/models" in args
    assert [a for a in args if a.startswith("--load-model=")] == [
        "--load-model=headct_molre",
        "--load-model=headct_molre_cpu",
    ]
    assert {"--http-port=8000", "--grpc-port=8001", "--metrics-port=8002"} <= set(args)
    assert args[-1] == "--log-verbose=1"


def test_training_image_runs_torchrun() -> None:
    dockerfile = DOCKER / "training.Dockerfile"
    (stage,) = stages(dockerfile).values()
    image, _, tag = stage.base.rpartition(":")
    assert image.endswith("pytorch") and "cuda" in tag, stage.base
    entrypoint = _last([stage], "ENTRYPOINT") or ""
    words = [w.strip('[]", ') for w in entrypoint.split(",")]
    assert words[0] == "torchrun"
    assert words[-2:] == ["headct", "train"], words
    assert any(i.keyword == "USER" for i in instructions(dockerfile))
