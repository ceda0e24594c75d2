# AdaptFormer Serve: the inference server (one frozen ViT, hot-swapped adapters) in a container.
#
# Build (BuildKit; Docker >= 23 uses it by default, Docker 20.10 needs DOCKER_BUILDKIT=1):
#   docker build -t adaptformer-serve:cpu .                                        # CPU (default)
#   docker build -t adaptformer-serve:cuda --build-arg VARIANT=cuda .              # NVIDIA GPUs
#   docker build --build-arg BASE_IMAGE=local/debian-python:bookworm ...          # no registry: a local base image
#   docker build --secret id=pip_ca,src=/etc/ssl/certs/ca-certificates.crt ...   # behind a TLS-intercepting proxy
# Run:
#   docker run -p 8000:8000 -v adapters:/data/adapters -e ADAPTFORMER_ADMIN_KEY=... adaptformer-serve:cpu
# All configuration is through ADAPTFORMER_* environment variables (see docs/DOCKER.md).

# VARIANT selects the base image and the torch build: cpu (BASE_IMAGE + CPU-only torch wheels) or cuda
# (CUDA_BASE_IMAGE + torch's CUDA build from PyPI, which brings its own CUDA libraries as nvidia-* wheels).
ARG VARIANT=cpu
# Any Debian/Ubuntu image with python3 (>= 3.10) works; one without python3 gets it from apt.
ARG BASE_IMAGE=python:3.11-slim-bookworm
ARG CUDA_BASE_IMAGE=nvidia/cuda:13.0.0-base-ubuntu24.04

# Only the stage VARIANT names is built (and pulled).
FROM ${BASE_IMAGE} AS base-cpu
FROM ${CUDA_BASE_IMAGE} AS base-cuda

# hadolint ignore=DL3006
FROM base-${VARIANT} AS base
SHELL ["/bin/sh", "-eu", "-c"]
# hadolint ignore=DL3008
RUN if ! python3 -c 'import venv, ensurepip' 2>/dev/null; then \
        apt-get update; \
        DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends python3 python3-venv ca-certificates; \
        rm -rf /var/lib/apt/lists/*; \
    fi; \
    python3 -c 'import sys; assert sys.version_info >= (3, 10), "python >= 3.10 needed, the base image has " + sys.version'
ENV LANG=C.UTF-8 \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1

# ---------------------------------------------------------------------------------------------------------------
# torch: a virtual environment in /opt/venv with torch and torchvision (the bulk of the image).
FROM base AS torch
ARG VARIANT
ARG TORCH_VERSION=2.14.1
ARG TORCHVISION_VERSION=0.29.1
# Where torch/torchvision come from. Empty: https://download.pytorch.org/whl/cpu for VARIANT=cpu (CPU-only
# wheels, ~1 GB smaller than PyPI's), PIP_INDEX_URL for VARIANT=cuda (PyPI's Linux x86_64 torch is the CUDA build).
ARG TORCH_INDEX_URL=
# The index for everything else (a mirror/proxy, or file:// paths are not reachable; use http://host:port/simple
# with `docker build --network=host`).
ARG PIP_INDEX_URL=https://pypi.org/simple
ARG PIP_EXTRA_INDEX_URL=
ARG PIP_TRUSTED_HOST=
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_DEFAULT_TIMEOUT=180 \
    PIP_ROOT_USER_ACTION=ignore \
    PIP_INDEX_URL=${PIP_INDEX_URL} \
    PIP_EXTRA_INDEX_URL=${PIP_EXTRA_INDEX_URL} \
    PIP_TRUSTED_HOST=${PIP_TRUSTED_HOST}

RUN python3 -m venv /opt/venv
# An optional CA bundle (build secret `pip_ca`) for pip behind a TLS-intercepting proxy: mounted for the pip steps
# only, never stored in a layer.
RUN --mount=type=secret,id=pip_ca \
    if [ -s /run/secrets/pip_ca ]; then export PIP_CERT=/run/secrets/pip_ca SSL_CERT_FILE=/run/secrets/pip_ca; fi; \
    index="${TORCH_INDEX_URL}"; \
    if [ -z "$index" ]; then \
        case "$VARIANT" in \
            cpu) index=https://download.pytorch.org/whl/cpu ;; \
            *) index="$PIP_INDEX_URL" ;; \
        esac; \
    fi; \
    echo "torch==${TORCH_VERSION} torchvision==${TORCHVISION_VERSION} from $index"; \
    PIP_EXTRA_INDEX_URL='' /opt/venv/bin/pip install --index-url "$index" \
        "torch==${TORCH_VERSION}" "torchvision==${TORCHVISION_VERSION}"

# ---------------------------------------------------------------------------------------------------------------
# requirements: the third-party dependencies, read from pyproject.toml ([project] dependencies + the server extra).
FROM torch AS requirements
COPY pyproject.toml /src/pyproject.toml
RUN /opt/venv/bin/python -c "import sys; toml = __import__('tomllib') if sys.version_info >= (3, 11) else __import__('pip._vendor.tomli', fromlist=['loads']); p = toml.load(open('/src/pyproject.toml', 'rb'))['project']; print('\n'.join(p['dependencies'] + p['optional-dependencies']['server']))" \
        > /requirements.txt

# ---------------------------------------------------------------------------------------------------------------
# builder: torch + the dependencies; only /opt/venv goes to the final image. Its cache key is the content of
# requirements.txt, so neither code changes nor other pyproject.toml edits rebuild this (large) layer.
FROM torch AS builder
COPY --from=requirements /requirements.txt /tmp/requirements.txt
RUN --mount=type=secret,id=pip_ca \
    if [ -s /run/secrets/pip_ca ]; then export PIP_CERT=/run/secrets/pip_ca SSL_CERT_FILE=/run/secrets/pip_ca; fi; \
    /opt/venv/bin/pip install -r /tmp/requirements.txt; \
    find /opt/venv -depth -type d -name tests -path '*/site-packages/*/tests' -prune -exec rm -rf {} +; \
    rm -rf /root/.cache /tmp/requirements.txt

# ---------------------------------------------------------------------------------------------------------------
# wheel: the package itself as a wheel (the .dockerignore lets only pyproject.toml, README.md and the package
# sources through; the embedded weights and demo adapters are package data).
FROM torch AS wheel
COPY . /src
RUN --mount=type=secret,id=pip_ca \
    if [ -s /run/secrets/pip_ca ]; then export PIP_CERT=/run/secrets/pip_ca SSL_CERT_FILE=/run/secrets/pip_ca; fi; \
    test -f /src/adapters/adaptformer/weights/embedded.safetensors \
        || echo "warning: adapters/adaptformer/weights/embedded.safetensors is missing; ADAPTFORMER_BACKBONE=embedded will not start" >&2; \
    /opt/venv/bin/pip wheel --no-deps --wheel-dir /wheels /src; \
    rm -rf /root/.cache

# ---------------------------------------------------------------------------------------------------------------
# runtime: the base image, a non-root user, the virtual environment + the package wheel; no compilers, no pip
# cache, no sources, no CA secret.
FROM base AS runtime
ARG VARIANT
LABEL org.opencontainers.image.title="adaptformer-serve" \
      org.opencontainers.image.description="AdaptFormer Serve: one frozen ViT, hot-swapped adapters (${VARIANT})" \
      org.opencontainers.image.licenses="Apache-2.0"

RUN groupadd --system --gid 10001 adaptformer; \
    useradd --system --uid 10001 --gid adaptformer --home-dir /home/adaptformer --create-home \
        --shell /usr/sbin/nologin adaptformer; \
    mkdir -p /data/adapters /data/cache; \
    chown -R adaptformer:adaptformer /data

COPY --from=builder /opt/venv /opt/venv
# The package on top, in a small layer of its own (no index, no dependencies: they are all in /opt/venv already).
RUN --mount=type=bind,from=wheel,source=/wheels,target=/tmp/wheels \
    /opt/venv/bin/pip install --no-index --no-deps --no-cache-dir --disable-pip-version-check \
        --root-user-action=ignore /tmp/wheels/*.whl; \
    /opt/venv/bin/pip check --disable-pip-version-check

# Defaults; override any ADAPTFORMER_* variable at run time. The adapter store and the download caches live
# under /data (mount volumes there; named volumes inherit the ownership set above).
ENV PATH=/opt/venv/bin:$PATH \
    ADAPTFORMER_HOST=0.0.0.0 \
    ADAPTFORMER_PORT=8000 \
    ADAPTFORMER_STORE=/data/adapters \
    ADAPTFORMER_BACKBONE=embedded \
    ADAPTFORMER_DEVICE=auto \
    HF_HOME=/data/cache/huggingface \
    TORCH_HOME=/data/cache/torch \
    XDG_CACHE_HOME=/data/cache

USER 10001:10001
WORKDIR /home/adaptformer
EXPOSE 8000

# Healthy = ready (backbone loaded, store read). Python's urllib: the image has no curl. A 503 raises, so exit 1.
HEALTHCHECK --interval=15s --timeout=5s --start-period=180s --retries=3 \
    CMD ["python3", "-c", "import os, urllib.request as r; r.urlopen('http://127.0.0.1:%s/readyz' % os.environ.get('ADAPTFORMER_PORT', '8000'), timeout=4)"]

# Exec form: the server is PID 1 and gets SIGTERM itself; uvicorn then stops accepting connections and lets
# in-flight requests finish (up to 10 s) before it exits. Python's teardown with torch loaded can take a while
# on a busy host: give it a stop timeout (docker stop -t 60 / compose stop_grace_period: 60s).
STOPSIGNAL SIGTERM
CMD ["adaptformer", "serve"]
