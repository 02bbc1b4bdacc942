"""Offline checks of the deployment files (docker/, docker-compose.yml, k8s/): no Docker engine
and no cluster, only their schemas, kustomize, kubernetes-validate, promtool, and the metric names
that a running gateway and the bundled Triton server really export."""
