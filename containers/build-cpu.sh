#!/usr/bin/env bash
# Build the project's image (../Dockerfile) on a CPU host with podman and no registry:
#   1. debootstrap a Debian bookworm root file system (Debian's python3, git) and
#      `podman import` it as localhost/astrobatch-debian:bookworm (skipped when it exists);
#   2. podman build cpu-base.Containerfile: a venv with the CPU build of torch, standing in
#      for the CUDA base image -> localhost/astrobatch-cpu-base:<torch>;
#   3. podman build ../Dockerfile --build-arg BASE_IMAGE=<that image> -> localhost/astrobatch:cpu.
# Used by `make container-test` (tests/test_container_image.py); the times and the image size
# are printed at the end. Needs root, podman, runc and debootstrap (Debian packages).
#
# Environment: IMAGE (localhost/astrobatch:cpu), WORK (/var/tmp/astrobatch-container, the
# root file system), DEBIAN_MIRROR, WHEELS (a folder of wheels pip may use, /opt/wheels when
# present), REBUILD=1 rebuilds the Debian image too.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(dirname "$here")"
IMAGE="${IMAGE:-localhost/astrobatch:cpu}"
WORK="${WORK:-/var/tmp/astrobatch-container}"
DEBIAN_MIRROR="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"
DEBIAN_IMAGE=localhost/astrobatch-debian:bookworm
TORCH_VERSION="$(sed -n 's/^torch==\([0-9.]*\)\s*$/\1/p' "$root/requirements-cpu.txt")"
BASE_IMAGE="localhost/astrobatch-cpu-base:${TORCH_VERSION}"
export CONTAINERS_CONF="${CONTAINERS_CONF:-$here/containers.conf}"
# podman 4.3 on Debian: crun fails on rlimits and hybrid cgroups here, runc works
pm() { podman --runtime runc "$@"; }
for tool in podman runc debootstrap; do
    command -v "$tool" > /dev/null || { echo "build-cpu.sh: $tool not found (apt-get install podman runc debootstrap)" >&2; exit 2; }
done
[ -n "$TORCH_VERSION" ] || { echo "build-cpu.sh: no torch==X pin in $root/requirements-cpu.txt" >&2; exit 2; }
t0=$SECONDS

if [ "${REBUILD:-0}" = 1 ] || ! pm image exists "$DEBIAN_IMAGE"; then
    rm -rf "$WORK/rootfs.partial"
    mkdir -p "$WORK"
    debootstrap --variant=minbase --include=python3,python3-venv,git,ca-certificates \
        bookworm "$WORK/rootfs.partial" "$DEBIAN_MIRROR"
    rm -rf "$WORK/rootfs" && mv "$WORK/rootfs.partial" "$WORK/rootfs"
    tar -C "$WORK/rootfs" -c . | pm import \
        --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
        --change 'CMD ["/bin/bash"]' - "$DEBIAN_IMAGE"
fi
t1=$SECONDS

# What the host's pip uses, lent to the RUN steps of both builds and never stored in a layer
# (build-time volumes): its CA bundle (a TLS-inspecting proxy's CA, where there is one) and a
# pip.conf with that bundle and the wheels folder. podman leaves the mount points (an empty
# /etc/pip.conf and /wheels) in the image; they change nothing.
build_mounts=(-v "$WORK/pip.conf:/etc/pip.conf:ro")
printf '[global]\n' > "$WORK/pip.conf"
if [ -f /etc/ssl/certs/ca-certificates.crt ]; then
    build_mounts+=(-v /etc/ssl/certs/ca-certificates.crt:/etc/ssl/certs/ca-certificates.crt:ro)
    printf 'cert = /etc/ssl/certs/ca-certificates.crt\n' >> "$WORK/pip.conf"
fi
if [ -d "${WHEELS:-/opt/wheels}" ]; then
    build_mounts+=(-v "${WHEELS:-/opt/wheels}:/wheels:ro")
    printf 'find-links = /wheels\n' >> "$WORK/pip.conf"
fi
pm build --network host "${build_mounts[@]}" -f "$here/cpu-base.Containerfile" \
    --build-arg DEBIAN_IMAGE="$DEBIAN_IMAGE" --build-arg TORCH_VERSION="$TORCH_VERSION" \
    -t "$BASE_IMAGE" "$here"
t2=$SECONDS

pm build --network host "${build_mounts[@]}" -f "$root/Dockerfile" --build-arg BASE_IMAGE="$BASE_IMAGE" \
    --build-arg VCS_REF="$(git -C "$root" rev-parse HEAD 2>/dev/null || echo unknown)" \
    -t "$IMAGE" "$root"
t3=$SECONDS

size="$(pm image inspect --format '{{.Size}}' "$IMAGE")"
echo "build-cpu.sh: $IMAGE built: debian rootfs $((t1 - t0)) s, cpu base $((t2 - t1)) s," \
     "project image $((t3 - t2)) s, total $((t3 - t0)) s; size $((size / 1000000)) MB"
