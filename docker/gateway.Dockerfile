# syntax=docker/dockerfile:1
# The gateway: FastAPI + onnxruntime (CPU), no torch. Two targets:
#   runtime   no model inside; for HEADCT_BACKEND=triton (the model lives on Triton)
#   embedded  runtime + model_repository/; HEADCT_BACKEND=onnx serves it in-process (the default
#             target, and the compose `cpu` profile)
# Build from the repository root:
#   docker build -f docker/gateway.Dockerfile --target runtime  -t headct-gateway:0.1.0 .
#   docker build -f docker/gateway.Dockerfile --target embedded -t headct-gateway:0.1.0-embedded .
#   docker build -f docker/gateway.Dockerfile --target runtime --build-arg HEADCT_EXTRAS=batch \
#       -t headct-batch:0.1.0-batch .
#             the runtime image with the `batch` extra (pyarrow), for headct batch writing Parquet
#             (k8s/components/batch); the gateway images leave pyarrow out (their 450 MB budget) and
#             their headct batch writes CSV only
# (podman build: add --format docker, or podman drops the HEALTHCHECK from its default OCI format)

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
# Extras of the package to install besides its core: "" for the gateway, "batch" for the batch image
ARG HEADCT_EXTRAS=""
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/venv
WORKDIR /src
COPY pyproject.toml README.md LICENSE ./
COPY service/ service/
# The serving package and its core dependencies only: no `training/` (the `headct` command lives
# in service.cli and lists the training commands only where the training package is installed)
# and never the `train` extra (torch). tests/deploy/test_wheel.py builds and serves exactly this.
# The `postgres` extra (psycopg, about 13 MB) lets replicas share a study store on PostgreSQL
# (HEADCT_STORE_URL; k8s/components/pacs).
RUN /opt/venv/bin/pip install --upgrade pip \
    && /opt/venv/bin/pip install ".[postgres${HEADCT_EXTRAS:+,$HEADCT_EXTRAS}]" \
    && ! /opt/venv/bin/python -c "import torch" 2>/dev/null
# The images copy only /opt/venv from here: leave out what the gateway never runs (the installers,
# the packages' own test suites, onnxruntime's model conversion and quantization tools).
RUN /opt/venv/bin/python -m pip uninstall --yes pip setuptools \
    && find /opt/venv -depth -type d -name tests -exec rm -rf {} + \
    && cd /opt/venv/lib/python3*/site-packages/onnxruntime \
    && rm -rf transformers quantization tools

FROM ${PYTHON_IMAGE} AS runtime
LABEL org.opencontainers.image.title="headct-triage gateway" \
      org.opencontainers.image.description="Head CT triage gateway (MoLRE). The bundled demo model is trained on synthetic phantoms: not for clinical use." \
      org.opencontainers.image.licenses="Apache-2.0"
# /var/lib/headct: where compose and Kubernetes mount the study store (HEADCT_DATA_DIR). It
# exists, owned by the user, so a new named volume mounted there is writable by it.
RUN groupadd --system --gid 10001 headct \
    && useradd --system --uid 10001 --gid headct --no-create-home --home-dir /nonexistent \
       --shell /usr/sbin/nologin headct \
    && install -d -o 10001 -g 10001 -m 0750 /var/lib/headct
COPY --from=build /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HEADCT_MODEL_REPOSITORY=/opt/headct/model_repository \
    HEADCT_LOG_JSON=true
WORKDIR /opt/headct
# Numeric user, so Kubernetes can check runAsNonRoot without resolving names.
USER 10001:10001
# 8080: the gateway (headct serve); 11112: DICOM, when the image runs headct listen.
EXPOSE 8080 11112
# The slim image has no curl: the standard library asks /healthz (liveness, not readiness: a
# gateway waiting for Triton is alive and says so on /readyz).
HEALTHCHECK --interval=15s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import sys, urllib.request; sys.exit(urllib.request.urlopen('http://127.0.0.1:8080/healthz', timeout=4).status != 200)"]
CMD ["headct", "serve", "--host", "0.0.0.0", "--port", "8080"]

FROM runtime AS embedded
COPY --chown=10001:10001 model_repository/ /opt/headct/model_repository/
ENV HEADCT_BACKEND=onnx
