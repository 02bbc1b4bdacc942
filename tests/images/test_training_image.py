"""The training image, built from docker/training.Dockerfile on a CPU build of torch (the
upstream CUDA base is several GB and needs a registry: docker/build-local-base.sh makes the
stand-in), runs ``headct train --help`` directly and through its torchrun entry point."""

from __future__ import annotations

from tests.images.podman import Podman

TAG = "headct-training:0.1.0"  # the tag the Dockerfile's header and the README build


def test_training_image_builds_on_cpu_torch_and_runs_headct_train(podman: Podman) -> None:
    base = podman.local_base("torch")
    image = podman.build(TAG, "docker/training.Dockerfile", build_args={"PYTORCH_IMAGE": base})
    torch = podman("run", "--rm", "--entrypoint", "python", image, "-c",
                   "import torch; print(torch.__version__)")  # fmt: skip
    assert torch.stdout.strip() == base.rsplit(":", 1)[1] + "+cpu"
    direct = podman("run", "--rm", "--entrypoint", "headct", image, "train", "--help")
    assert "--data" in direct.stdout and "--out" in direct.stdout, direct.stdout
    # The image's own entry point, with one process (it asks for one per GPU: none here).
    via_torchrun = podman(
        "run", "--rm", "--entrypoint", "torchrun", image,
        "--standalone", "--nproc-per-node=1", "--no-python", "headct", "train", "--help",
    )  # fmt: skip
    assert "--data" in via_torchrun.stdout, via_torchrun.stdout + via_torchrun.stderr
    assert podman.inspect(image, "image")["Config"]["User"] == "10001:10001"
