# astrobatch on a CUDA GPU: the same package and the same pins as the CPU set-up.
#
#   docker build -t astrobatch --build-arg VCS_REF="$(git rev-parse HEAD)" .
#   docker run --rm --gpus all --user "$(id -u):$(id -g)" -v "$PWD:/project" astrobatch star-sets train
#
# Base image: the official PyTorch runtime image, pinned by exact tag. Its torch (2.13.0, CUDA
# 12.8, cuDNN 9) is the same version as the CPU wheel pinned in requirements-cpu.txt, so the CPU
# set-up, a GPU box and this container run one torch version (tests/test_containers.py checks
# that the tag and the pin agree). For byte-for-byte rebuilds pin the digest as well
# (pytorch/pytorch:<tag>@sha256:...), taken from `docker buildx imagetools inspect <tag>`.
#
# Why not NGC (nvcr.io/nvidia/pytorch:YY.MM-py3)? NGC ships NVIDIA's own torch build (a
# pre-release version such as 2.x.0a0+git<hash>, never equal to the torch==2.13.0 pin) and pins
# it, with numpy and friends, through PIP_CONSTRAINT=/etc/pip/constraint.txt; it is also several
# times larger. If a cluster requires NGC: keep its constraint file in force (never blank
# PIP_CONSTRAINT, or pip may replace NVIDIA's torch with a PyPI wheel), install the same
# requirements.txt on top, and when a pin clashes with the constraints choose an NGC release whose
# constraints agree rather than editing either file; record the NGC release -> torch version
# (from NVIDIA's release notes) next to the pin.
#
# BASE_IMAGE: any image with Python 3.11 (`python` on PATH, pip) and torch ${TORCH_VERSION}. The
# default is the CUDA image users build; `make container-test` (containers/README.md) passes a
# local CPU base made with debootstrap, with no registry.
ARG BASE_IMAGE=pytorch/pytorch:2.13.0-cuda12.8-cudnn9-runtime
FROM ${BASE_IMAGE}

# The torch version of the base tag: checked against the installed torch and used as a pip
# constraint, so no requirement can ever swap the CUDA build of torch for another one.
ARG TORCH_VERSION=2.13.0
ARG BASE_IMAGE

LABEL org.opencontainers.image.title="astrobatch" \
      org.opencontainers.image.description="Reproducible deep-learning studies in astronomy: one package, one DVC pipeline, laptop to SLURM (CUDA image)." \
      org.opencontainers.image.version="0.1.0" \
      org.opencontainers.image.licenses="MIT" \
      org.opencontainers.image.base.name="${BASE_IMAGE}"

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PYTHONNOUSERSITE=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore \
    MPLBACKEND=Agg \
    LC_ALL=C.UTF-8 \
    LANG=C.UTF-8

# git: DVC needs it. The mounted project belongs to the host user, not to the image user, so
# trust every directory (git's "dubious ownership" check would otherwise stop dvc).
# Apt versions are not pinned (DL3008, see .hadolint.yaml): the pinned base tag fixes the release.
RUN apt-get update \
    && apt-get install -y --no-install-recommends git \
    && rm -rf /var/lib/apt/lists/* \
    && git config --system --add safe.directory '*'

# The shared pins: the SAME requirements.txt as the CPU set-up (requirements-cpu.txt includes it
# with `-r requirements.txt`); torch is not in it, it comes from the base image.
COPY requirements.txt /tmp/astrobatch/requirements.txt
RUN python -c "import sys, torch; v = torch.__version__.split('+')[0]; sys.exit(0 if v == '${TORCH_VERSION}' else f'base image has torch {v}, expected ${TORCH_VERSION}')" \
    && echo "torch==${TORCH_VERSION}" > /tmp/astrobatch/constraints.txt \
    && python -m pip install --no-cache-dir \
        --constraint /tmp/astrobatch/constraints.txt \
        --requirement /tmp/astrobatch/requirements.txt

# The project itself, without dependencies (they are all pinned above).
COPY pyproject.toml README.md /tmp/astrobatch/
COPY src /tmp/astrobatch/src
RUN python -m pip install --no-cache-dir --no-deps /tmp/astrobatch \
    && rm -rf /tmp/astrobatch \
    && astrobatch --help > /dev/null

# A non-root user; `docker run --user "$(id -u):$(id -g)"` maps it to the host user instead, so
# that outputs written to the mounted project belong to you.
RUN useradd --create-home --no-log-init --uid 1000 --user-group astro
USER 1000:1000

# The DVC project is mounted here at run time (-v "$PWD:/project"); nothing of it is baked in.
WORKDIR /project

ENTRYPOINT ["astrobatch"]
CMD ["--help"]

# Commit the image is built from (docker build --build-arg VCS_REF="$(git rev-parse HEAD)"):
# declared last, so that a new commit does not invalidate the cached install layers.
ARG VCS_REF=unknown
LABEL org.opencontainers.image.revision="${VCS_REF}"
