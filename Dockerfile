# liftplace: one image for the API service, the Ray head, the Ray GPU workers and the MLflow server
# (docker-compose.yml). Ray workers import `liftplace` and `worker` from this same install, and a Ray
# cluster needs one Python and one Ray version on every node: hence one image. docs/deploy.md explains it.
#
# Python: the official image python:3.11.18-slim-bookworm, the patch release pinned by its tag. Ray
# refuses a node whose Python differs from the head's in major.minor.patch, and a PPA (the former
# base) installs whatever 3.11 build is current on the day of the build.
# CUDA: torch==2.14.1 from PyPI is a CUDA 13.0 build that brings its own CUDA user-space libraries
# (cuDNN, cuBLAS, NCCL, ... as the nvidia-* wheels of the lock), so the image needs no CUDA base: the
# NVIDIA Container Toolkit injects the host driver (libcuda, NVML, nvidia-smi) into a container given
# GPUs, with the capabilities NVIDIA_DRIVER_CAPABILITIES names (compute; utility: nvidia-smi and NVML,
# which Ray uses to count GPUs), and NVIDIA_REQUIRE_CUDA makes it refuse, at start, a host driver too
# old for CUDA 13.0 (>= 580): the two settings NVIDIA's CUDA images carry, without their 100+ MB.
FROM python:3.11.18-slim-bookworm

ARG UID=1000
ARG GID=1000

ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility \
    NVIDIA_REQUIRE_CUDA="cuda>=13.0" \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH

# Every package, the build tools included, at the version and with the hashes of
# deploy/requirements.lock (made by deploy/lock.sh from pyproject.toml's pins): pip refuses a file
# whose hash is not listed, and --no-deps installs nothing the lock does not name. In its own layer,
# so that editing the code does not reinstall torch.
COPY deploy/requirements.lock /tmp/liftplace-build/requirements.lock
RUN python -m venv ${VIRTUAL_ENV} \
 && pip install --require-hashes --no-deps -r /tmp/liftplace-build/requirements.lock \
 && rm -rf /tmp/liftplace-build

# The package itself with the `platform` extra (API server, SQL queue, Ray workers, MLflow): every
# requirement is already installed from the lock (--no-deps: nothing else is fetched), and
# `pip check` proves the lock satisfies them all.
COPY . /tmp/liftplace-src
RUN pip install --no-build-isolation --no-deps "/tmp/liftplace-src[platform]" \
 && pip check \
 && rm -rf /tmp/liftplace-src \
 && liftplace serve --help > /dev/null

# A non-root user owns the data dir (job outputs, caches), the MLflow artifact store and MLflow's user
# store (basic auth); a named volume mounted there starts with this ownership. Teachers, datasets and
# weights are mounted read-only.
RUN groupadd --gid ${GID} liftplace \
 && useradd --uid ${UID} --gid ${GID} --create-home --shell /bin/bash liftplace \
 && mkdir -p /data /mlartifacts /mlflow-auth /teachers /datasets /weights \
 && chown liftplace:liftplace /data /mlartifacts /mlflow-auth
USER liftplace
WORKDIR /home/liftplace

ENV LIFTPLACE_DATA_DIR=/data \
    LIFTPLACE_TEACHERS_DIR=/teachers \
    LIFTPLACE_DATASETS_DIR=/datasets \
    LIFTPLACE_CACHE_DIR=/data/cache

EXPOSE 8000
# Readiness (503 when the database, the dispatcher or Ray is broken); /api/status answers while the process lives.
HEALTHCHECK --interval=30s --timeout=25s --start-period=120s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/api/ready' % os.environ.get('LIFTPLACE_PORT', '8000'), timeout=20)"]

# The API on all interfaces of the container (port LIFTPLACE_PORT, default 8000). It has no
# authentication of its own: publish it on a trusted network or behind a proxy (docs/deploy.md).
CMD ["liftplace", "serve", "--host", "0.0.0.0"]
