# syntax=docker/dockerfile:1
# Training on GPUs: MoLRE (or a baseline) with DDP, one process per GPU, through torchrun.
# Build from the repository root:
#   docker build -f docker/training.Dockerfile -t headct-training:0.1.0 .
# Train on every GPU of the machine (studies and labels.csv in ./data, runs in ./runs):
#   docker run --gpus all --shm-size 8g -v $PWD/data:/data:ro -v $PWD/runs:/runs \
#     -v $PWD/weights:/weights:ro headct-training:0.1.0 --data /data --out /runs/molre \
#     --backbone dinov2_base --weights /weights/dinov2-base   # your local checkpoint folder
# Other commands, e.g. export into the repository Triton serves (mounted over the copy inside):
#   docker run --gpus all -v $PWD/runs:/runs -v $PWD/model_repository:/opt/headct/model_repository \
#     --entrypoint headct headct-training:0.1.0 export --run /runs/molre
# Where no image registry is reachable, docker/build-local-base.sh makes a CPU-torch stand-in:
#   --build-arg PYTORCH_IMAGE=localhost/headct-torch-cpu:<torch version>
ARG PYTORCH_IMAGE=pytorch/pytorch:2.8.0-cuda12.8-cudnn9-runtime
FROM ${PYTORCH_IMAGE}

ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PYTHONUNBUFFERED=1
WORKDIR /opt/headct
COPY pyproject.toml README.md LICENSE ./
COPY service/ service/
COPY training/ training/
COPY synth/ synth/
COPY model_repository/ model_repository/
# Keep the image's CUDA build of torch: pin it to the installed version while the `train` extra
# installs the rest (transformers, onnx, scikit-learn, matplotlib). Editable, so `headct export`
# finds model_repository/headct_molre_cpu/1/model.py beside the package, as in a checkout.
RUN python -c "import torch; print(f'torch=={torch.__version__}')" > /tmp/torch-pin.txt \
    && pip install -c /tmp/torch-pin.txt -e '.[train]' \
    && python -c "import torch, training.train; print('torch', torch.__version__)"

RUN groupadd --system --gid 10001 headct \
    && useradd --system --uid 10001 --gid headct --create-home --home-dir /home/headct headct
USER 10001:10001
# torchrun starts one `headct train` per GPU (--nproc-per-node=gpu); `headct train` joins the
# process group itself when WORLD_SIZE > 1 (NCCL). For several machines, replace --standalone
# with --nnodes/--rdzv-endpoint through `--entrypoint torchrun`.
ENTRYPOINT ["torchrun", "--standalone", "--nproc-per-node=gpu", "--no-python", "headct", "train"]
CMD ["--data", "/data", "--out", "/runs/molre"]
