# syntax=docker/dockerfile:1
# Triton Inference Server with the headct model repository.
#   headct_molre      ONNX on the onnxruntime backend (GPU nodes; the default)
#   headct_molre_cpu  the same model.onnx on the python backend + onnxruntime (CPU nodes):
#                     HEADCT_TRITON_MODELS=headct_molre_cpu
# Build from the repository root:
#   docker build -f docker/triton.Dockerfile -t headct-triton:0.1.0 .
# Triton 24.12 (2.53, CUDA 12.6): NVIDIA driver 560+, or 535/550 with forward compatibility on
# data-centre GPUs. A newer tag works the same way; pin the one you have validated.
FROM nvcr.io/nvidia/tritonserver:24.12-py3

# headct_molre_cpu's execution environment, made with the image's own Python so the python
# backend stub (built for that Python) can load it.
COPY docker/triton/python-backend.txt /opt/headct/python-backend.txt
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3-venv curl \
    && rm -rf /var/lib/apt/lists/* \
    && python3 -m venv /opt/headct/.venv-triton \
    && /opt/headct/.venv-triton/bin/pip install --no-cache-dir -r /opt/headct/python-backend.txt

# The repository baked in, so the image serves on its own; compose and Kubernetes mount a
# volume here instead to publish new versions without a rebuild.
COPY model_repository/ /opt/headct/model_repository/
COPY --chmod=0755 docker/triton/serve.sh /opt/headct/serve.sh

ENV HEADCT_MODEL_REPOSITORY=/opt/headct/model_repository \
    HEADCT_TRITON_MODELS=headct_molre
# An unprivileged user with a fixed, numeric id (k8s/components/triton runs the pod as it).
RUN groupadd --system --gid 10002 headct \
    && useradd --system --uid 10002 --gid headct --create-home --home-dir /home/headct headct
USER 10002:10002
EXPOSE 8000 8001 8002
HEALTHCHECK --interval=10s --timeout=5s --start-period=180s --retries=3 \
    CMD ["curl", "-fsS", "-o", "/dev/null", "http://127.0.0.1:8000/v2/health/ready"]
CMD ["/opt/headct/serve.sh"]
