#!/usr/bin/env bash
# The offline path: makes, with podman, the base images that the images in docker/ and
# docker-compose.yml start from, on a machine that reaches the package registries (apt, PyPI) but
# no image registry. On a normal machine you do not need this: `docker build` and
# `docker compose` pull the real bases.
#
#   localhost/debian:bookworm     debootstrap --variant=minbase of Debian bookworm (the root of
#                                 the others)
#   python:3.11-slim-bookworm     Debian's Python 3.11 + the machine's CA bundle (pip behind a
#                                 TLS proxy), under the name gateway.Dockerfile's FROM uses
#   prom/prometheus:<compose tag> Debian's prometheus package (2.42), under the compose file's
#                                 image name
#   localhost/headct-torch-cpu:<torch>  the CPU build of constraints.txt's torch, for
#                                 docker build --build-arg PYTORCH_IMAGE=... -f docker/training.Dockerfile
#
# Idempotent: an image that exists (made earlier, or pulled) is left as it is; remove it to make it
# again. Usage: bash docker/build-local-base.sh [debian|python|prometheus|torch]...  (default: all);
# `bash docker/build-local-base.sh --name torch` prints an image's name and makes nothing.
# Needs podman, debootstrap, root (or sudo) for debootstrap. Environment: CONTAINERS_CONF (default
# docker/podman/containers.conf), DEBIAN_MIRROR (default: the Debian mirror apt uses),
# HOST_CA_BUNDLE (default /etc/ssl/certs/ca-certificates.crt), TORCH_WHEEL_DIR (a folder with
# the torch CPU wheel; default the first of PIP_FIND_LINKS holding it, else PyTorch's CPU index).
set -euo pipefail
cd "$(dirname "$0")/.."
export CONTAINERS_CONF=${CONTAINERS_CONF:-$PWD/docker/podman/containers.conf}

say() { printf 'build-local-base: %s\n' "$*" >&2; }
die() { say "$*"; exit 1; }

command -v podman >/dev/null || die "podman is not installed (apt-get install podman runc; bash .ci/run does this)"
sudo=$([ "$(id -u)" -eq 0 ] || echo sudo)

# Each name comes from the file that uses it, qualified the way podman stores a pulled image.
qualify() {
    case $1 in
        */*/*) echo "$1" ;;
        */*) echo "docker.io/$1" ;;
        *) echo "docker.io/library/$1" ;;
    esac
}
python_from=$(sed -n 's/^ARG PYTHON_IMAGE=//p' docker/gateway.Dockerfile)
prometheus_from=$(sed -n 's/^ *image: *\(prom\/prometheus:.*\)$/\1/p' docker-compose.yml)
TORCH_VERSION=$(sed -n 's/^torch==//p' constraints.txt)
[ -n "$python_from" ] || die "no ARG PYTHON_IMAGE= in docker/gateway.Dockerfile"
[ -n "$prometheus_from" ] || die "no prom/prometheus image in docker-compose.yml"
[ -n "$TORCH_VERSION" ] || die "no torch== pin in constraints.txt"
DEBIAN_IMAGE=localhost/debian:bookworm
PYTHON_IMAGE=$(qualify "$python_from")
PROMETHEUS_IMAGE=$(qualify "$prometheus_from")
TORCH_IMAGE=localhost/headct-torch-cpu:$TORCH_VERSION

name_of() {
    case $1 in
        debian) echo "$DEBIAN_IMAGE" ;;
        python) echo "$PYTHON_IMAGE" ;;
        prometheus) echo "$PROMETHEUS_IMAGE" ;;
        torch) echo "$TORCH_IMAGE" ;;
        *) die "unknown image '$1' (debian, python, prometheus or torch)" ;;
    esac
}
if [ "${1:-}" = --name ]; then
    shift
    for target in "$@"; do name_of "$target"; done
    exit 0
fi

exists() { podman image exists "$1"; }
# Root file system and build contexts, removed on exit (debootstrap's files belong to root).
scratch=$(mktemp -d /var/tmp/headct-local-base.XXXXXX)
trap '$sudo rm -rf "$scratch"' EXIT
build() { podman build --network host --pull=never "$@"; }

make_debian() {
    if exists "$DEBIAN_IMAGE"; then say "$DEBIAN_IMAGE exists"; return; fi
    command -v debootstrap >/dev/null || die "debootstrap is not installed (apt-get install debootstrap)"
    local mirror=${DEBIAN_MIRROR:-}
    if [ -z "$mirror" ]; then
        mirror=$(grep -rhoE '(URIs:|^deb) +https?://[^ ]+/debian/?( |$)' \
            /etc/apt/sources.list /etc/apt/sources.list.d/ 2>/dev/null \
            | awk '{print $2}' | head -n1 || true)
    fi
    mirror=${mirror:-http://deb.debian.org/debian}
    local root=$scratch/rootfs
    say "debootstrap bookworm from $mirror (a few minutes)"
    $sudo debootstrap --variant=minbase bookworm "$root" "$mirror" >/dev/null
    # Slim, as Debian's -slim images: no documentation or translations, now or in later installs.
    $sudo tee "$root/etc/dpkg/dpkg.cfg.d/docker-slim" >/dev/null <<'EOF'
path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/man/*
path-exclude /usr/share/info/*
path-exclude /usr/share/locale/*
path-include /usr/share/locale/locale.alias
EOF
    $sudo find "$root/usr/share/doc" -mindepth 1 -not -name copyright -not -type d -delete
    $sudo rm -rf "$root"/usr/share/man/* "$root"/usr/share/info/* "$root"/var/lib/apt/lists/* \
        "$root"/var/cache/apt/*.bin "$root"/var/cache/apt/archives/*.deb "$root"/var/log/*.log
    $sudo find "$root/usr/share/locale" -mindepth 1 -maxdepth 1 -not -name locale.alias \
        -exec rm -rf {} +
    $sudo tar -C "$root" -c . | podman import --change 'CMD ["bash"]' - "$DEBIAN_IMAGE" >/dev/null
    say "made $DEBIAN_IMAGE"
}

make_python() {
    if exists "$PYTHON_IMAGE"; then say "$PYTHON_IMAGE exists"; return; fi
    make_debian
    local context=$scratch/python
    mkdir "$context"
    cp "${HOST_CA_BUNDLE:-/etc/ssl/certs/ca-certificates.crt}" "$context/host-ca-bundle.crt"
    build -f docker/local-base/python.Containerfile --build-arg "DEBIAN_IMAGE=$DEBIAN_IMAGE" \
        -t "$PYTHON_IMAGE" "$context"
    say "made $PYTHON_IMAGE"
}

make_prometheus() {
    if exists "$PROMETHEUS_IMAGE"; then say "$PROMETHEUS_IMAGE exists"; return; fi
    make_debian
    build -f docker/local-base/prometheus.Containerfile --build-arg "DEBIAN_IMAGE=$DEBIAN_IMAGE" \
        -t "$PROMETHEUS_IMAGE" docker/local-base
    say "made $PROMETHEUS_IMAGE"
}

make_torch() {
    if exists "$TORCH_IMAGE"; then say "$TORCH_IMAGE exists"; return; fi
    make_python
    local context=$scratch/torch wheel="" dir index=""
    mkdir -p "$context/wheels"
    for dir in ${TORCH_WHEEL_DIR:-} ${PIP_FIND_LINKS:-}; do
        wheel=$(find "$dir" -maxdepth 1 -name "torch-$TORCH_VERSION+cpu-cp311-*.whl" 2>/dev/null \
            | head -n1)
        [ -z "$wheel" ] || break
    done
    if [ -n "$wheel" ]; then
        say "torch from $wheel"
        ln "$wheel" "$context/wheels/" 2>/dev/null || cp "$wheel" "$context/wheels/"
    else
        index=https://download.pytorch.org/whl/cpu
        say "torch from $index"
    fi
    build -f docker/local-base/torch-cpu.Containerfile --build-arg "PYTHON_IMAGE=$PYTHON_IMAGE" \
        --build-arg "TORCH_VERSION=$TORCH_VERSION" --build-arg "TORCH_INDEX=$index" \
        -t "$TORCH_IMAGE" "$context"
    say "made $TORCH_IMAGE"
}

targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(debian python prometheus torch)
for target in "${targets[@]}"; do
    name_of "$target" >/dev/null
    "make_$target"
done
