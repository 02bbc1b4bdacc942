#!/usr/bin/env bash
# Start Triton on the headct model repository with explicit model control: only the models named
# in HEADCT_TRITON_MODELS load (headct_molre on GPU nodes, headct_molre_cpu on CPU nodes), so a
# model that cannot load on this node's build never stops the server. Extra arguments are passed
# to tritonserver.
set -euo pipefail
repository=${HEADCT_MODEL_REPOSITORY:-/opt/headct/model_repository}
models=${HEADCT_TRITON_MODELS:-headct_molre}
load=()
for model in ${models//,/ }; do
    load+=("--load-model=${model}")
done
exec tritonserver \
    --model-repository="${repository}" \
    --model-control-mode=explicit \
    "${load[@]}" \
    --strict-readiness=true \
    --exit-on-error=true \
    --http-port=8000 --grpc-port=8001 --metrics-port=8002 \
    --allow-metrics=true --allow-gpu-metrics=true --allow-cpu-metrics=true \
    --log-format=ISO8601 \
    "$@"
