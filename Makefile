# prodclf: `make demo` and `make test` do their own setup on a fresh Debian machine
# (Python 3.11, Java 17). Everything installs into .venv from constraints.txt.

SHELL := /bin/bash
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.prodclf-installed
WORKDIR ?= demo-workdir
FASHION_MNIST ?= /usr/share/datasets/fashion-mnist
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
PYTEST_ARGS ?=

export PYSPARK_PYTHON := $(abspath $(BIN))/python
export TF_CPP_MIN_LOG_LEVEL := 2

.PHONY: setup demo test test-fast lint typecheck bench bench-incremental results clean check-java fashion-mnist

setup: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	@$(MAKE) --no-print-directory check-java
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade "pip>=24"
	$(BIN)/python -m pip install -q -c constraints.txt -e '.[dev]'
	@touch $@

check-java:
	@command -v java >/dev/null || { echo "Java 17 is required (apt-get install openjdk-17-jre-headless)"; exit 1; }

fashion-mnist:
	@test -f $(FASHION_MNIST)/t10k-images-idx3-ubyte.gz || { \
	  echo "Installing Debian's dataset-fashion-mnist"; \
	  $(SUDO) apt-get install -y dataset-fashion-mnist >/dev/null || { \
	    $(SUDO) apt-get update >/dev/null && $(SUDO) apt-get install -y dataset-fashion-mnist >/dev/null; }; }

demo: setup fashion-mnist
	$(BIN)/prodclf demo --workdir $(WORKDIR) --data-dir $(FASHION_MNIST)

test: setup
	$(BIN)/python -m pytest $(PYTEST_ARGS)

test-fast: setup
	$(BIN)/python -m pytest -m "not slow and not cluster" $(PYTEST_ARGS)

lint: setup
	$(BIN)/ruff check prodclf jobs tests benchmarks
	$(BIN)/ruff format --check prodclf jobs tests benchmarks
	$(BIN)/mypy

bench: setup
	$(BIN)/python benchmarks/bench.py $(BENCH_ARGS)

# The incremental selection on 1M synthetic products (no images): bench-workdir/incremental.json.
bench-incremental: setup
	$(BIN)/python benchmarks/bench_incremental.py $(BENCH_ARGS)

# The results table on real data (Fashion-MNIST, ../shared's Grocery Store): docs/results.md.
results: setup fashion-mnist
	$(BIN)/python benchmarks/results.py --workdir results-workdir --out docs/results.md $(RESULTS_ARGS)

clean:
	rm -rf $(WORKDIR) bench-workdir results-workdir .pytest_cache .mypy_cache .ruff_cache spark-warehouse
