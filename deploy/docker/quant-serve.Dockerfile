# syntax=docker/dockerfile:1.7
# quant-serve: the low-latency scorer (quant_assets.cli.scorer_app) over the MLflow
# registry's `champion` alias, as a Kubernetes Deployment.
#
# Build from the repository root (the build context needs requirements.lock, pyproject.toml
# and the code):
#   docker build -f deploy/docker/quant-serve.Dockerfile \
#     --build-arg QUANT_GIT_COMMIT=$(git rev-parse HEAD) -t $REGISTRY/quant-serve:0.1.0 .
#
# Every step pod loads the whole code location (quant_assets.definitions imports every
# stage), so every image carries the project's full dependency set, each version pinned by
# requirements.lock; the images differ in torch build and entry point.
# Base image: an exact Python patch release on Debian bookworm (the Python requirements.lock
# was resolved with). Pin its digest in CI: `docker buildx imagetools inspect python:3.11.7-slim-bookworm`
# and build with --build-arg PYTHON_IMAGE=python:3.11.7-slim-bookworm@sha256:<digest>.
ARG PYTHON_IMAGE=python:3.11.7-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PYTHONDONTWRITEBYTECODE=1
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /build
COPY requirements.lock pyproject.toml ./
# torch first and alone, the CPU build from PyTorch's index (requirements.lock pins 2.13.0;
# PyPI's Linux wheel would pull ~3 GB of CUDA libraries)
RUN pip install --index-url https://download.pytorch.org/whl/cpu torch==2.13.0+cpu
# The project's direct dependencies from pyproject.toml, every version of the tree from
# requirements.lock (torch==2.13.0 is already satisfied by the build above). dagster-postgres
# is the instance storage of a deployment (same release train as dagster-k8s/dagster-aws).
RUN python -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']))" > deps.txt \
 && pip install -c requirements.lock -r deps.txt dagster-postgres==0.29.27 \
 && pip check

FROM ${PYTHON_IMAGE}
# LightGBM's wheel links the system OpenMP runtime (libgomp.so.1), absent from slim images.
RUN apt-get update \
 && apt-get install -y --no-install-recommends libgomp1=12.2.0-14+deb12u1 \
 && rm -rf /var/lib/apt/lists/*
# A fixed numeric non-root user, so that Kubernetes' runAsNonRoot can verify it.
RUN groupadd --gid 10001 quant \
 && useradd --uid 10001 --gid 10001 --no-create-home --home-dir /tmp --shell /usr/sbin/nologin quant
COPY --from=build /opt/venv /opt/venv
WORKDIR /opt/quant-assets
# The code is run from here, not installed: placement reads deploy/pools.yaml next to the
# package. Owned by root, read-only to the quant user.
COPY quant_assets ./quant_assets
COPY resources ./resources
COPY sensors ./sensors
COPY deploy/pools.yaml ./deploy/pools.yaml
COPY workspace.yaml ./
RUN python -m compileall -q /opt/quant-assets
ARG QUANT_GIT_COMMIT=""
# Everything written at run time goes under /tmp (an emptyDir in the pods), so the root
# filesystem can be mounted read-only: numba's kernel cache, matplotlib's config, HOME.
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONPATH=/opt/quant-assets \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HOME=/tmp \
    QUANT_HOME=/tmp/quant \
    NUMBA_CACHE_DIR=/tmp/numba-cache \
    MPLCONFIGDIR=/tmp/matplotlib \
    DAGSTER_HOME=/opt/dagster/dagster_home \
    QUANT_ENV=k8s \
    QUANT_GIT_COMMIT=${QUANT_GIT_COMMIT}
# how often the scorer re-reads the registry alias (seconds)
ENV SCORER_ALIAS_TTL_S=5
USER 10001:10001
EXPOSE 8080
CMD ["python", "-m", "quant_assets.cli.scorer_app", "--host", "0.0.0.0", "--port", "8080"]
