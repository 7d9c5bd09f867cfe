# liftplace: one image for the API service, the Ray head, the Ray GPU workers and the MLflow server
# (docker-compose.yml). Ray workers import `liftplace` and `worker` from this same install, and a Ray
# cluster needs one Python and one Ray version on every node: hence one image. docs/deploy.md explains it.
#
# CUDA: torch==2.14.1 from PyPI is a CUDA 13.0 build that brings its own CUDA user-space libraries
# (cuDNN, cuBLAS, NCCL, ... as nvidia-* wheels), so the base is NVIDIA's minimal CUDA 13.0 image: it
# declares the driver capabilities the NVIDIA Container Toolkit injects (compute, utility: nvidia-smi and
# NVML, which Ray uses to count GPUs) and refuses, at start, a host driver too old for CUDA 13.0 (>= 580).
FROM nvidia/cuda:13.0.0-base-ubuntu22.04

ARG PYTHON=python3.11
ARG PIP_VERSION=26.3
ARG SETUPTOOLS_VERSION=84.2.1
ARG WHEEL_VERSION=0.48.0
ARG UID=1000
ARG GID=1000

ENV DEBIAN_FRONTEND=noninteractive \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH

# Python 3.11 (the project's `requires-python`) from the deadsnakes PPA: Ubuntu 22.04 ships 3.10.
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates gpg-agent software-properties-common \
 && add-apt-repository -y ppa:deadsnakes/ppa \
 && apt-get update \
 && apt-get install -y --no-install-recommends ${PYTHON} ${PYTHON}-venv \
 && apt-get purge -y --auto-remove software-properties-common gpg-agent \
 && rm -rf /var/lib/apt/lists/* \
 && ${PYTHON} -m venv ${VIRTUAL_ENV} \
 && pip install pip==${PIP_VERSION} setuptools==${SETUPTOOLS_VERSION} wheel==${WHEEL_VERSION}

# The pinned dependencies (pyproject.toml: core + the `platform` extra, ray with its dashboard) in their
# own layer: editing the code does not reinstall torch.
COPY pyproject.toml deploy/requirements.py /tmp/liftplace-build/
RUN python /tmp/liftplace-build/requirements.py /tmp/liftplace-build/pyproject.toml platform \
        > /tmp/liftplace-build/requirements.txt \
 && pip install -r /tmp/liftplace-build/requirements.txt \
 && rm -rf /tmp/liftplace-build

# The package itself with the `platform` extra (API server, SQL queue, Ray workers, MLflow): every
# requirement is already installed at its pin, so this only builds and installs liftplace.
COPY . /tmp/liftplace-src
RUN pip install --no-build-isolation "/tmp/liftplace-src[platform]" \
 && pip check \
 && rm -rf /tmp/liftplace-src \
 && liftplace serve --help > /dev/null

# A non-root user owns the data dir (job outputs, caches) and the MLflow artifact store; a named volume
# mounted there starts with this ownership. Teachers, datasets and weights are mounted read-only.
RUN groupadd --gid ${GID} liftplace \
 && useradd --uid ${UID} --gid ${GID} --create-home --shell /bin/bash liftplace \
 && mkdir -p /data /mlartifacts /teachers /datasets /weights \
 && chown liftplace:liftplace /data /mlartifacts
USER liftplace
WORKDIR /home/liftplace

ENV LIFTPLACE_DATA_DIR=/data \
    LIFTPLACE_TEACHERS_DIR=/teachers \
    LIFTPLACE_DATASETS_DIR=/datasets \
    LIFTPLACE_CACHE_DIR=/data/cache

EXPOSE 8000
HEALTHCHECK --interval=30s --timeout=10s --start-period=120s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/api/status' % os.environ.get('LIFTPLACE_PORT', '8000'), timeout=5)"]

# The API on all interfaces of the container (port LIFTPLACE_PORT, default 8000). It has no
# authentication of its own: publish it on a trusted network or behind a proxy (docs/deploy.md).
CMD ["liftplace", "serve", "--host", "0.0.0.0"]
