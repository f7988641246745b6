# prodclf: `make demo` and `make test` do their own setup on a fresh Debian machine
# (Python 3.11, Java 17). Two environments:
#   .venv         Spark 3.5, everything (tag, evaluate, train): constraints.txt, extras tf,train,dev
#   .venv-spark4  Spark 4.x, no petastorm (tag, evaluate): constraints-spark4.txt, extras tf,dev

SHELL := /bin/bash
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.prodclf-installed
VENV_SPARK4 ?= .venv-spark4
BIN4 := $(VENV_SPARK4)/bin
STAMP4 := $(VENV_SPARK4)/.prodclf-installed
# The Spark 4 tier: tests marked spark4, less those that train (no petastorm there).
SPARK4_MARKERS := spark4 and not train
WORKDIR ?= demo-workdir
FASHION_MNIST ?= /usr/share/datasets/fashion-mnist
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
PYTEST_ARGS ?=

export PYSPARK_PYTHON := $(abspath $(BIN))/python
export TF_CPP_MIN_LOG_LEVEL := 2

.PHONY: setup setup-spark4 demo test test-spark35 test-spark4 test-fast lint typecheck bench \
	results clean check-java fashion-mnist s3a-jars iceberg-jar iceberg-reader-env airflow-env \
	test-airflow bench-incremental bench-ray-env chromium pushgateway

setup: $(STAMP)

setup-spark4: $(STAMP4)

$(STAMP): pyproject.toml constraints.txt
	@$(MAKE) --no-print-directory check-java
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade "pip>=24"
	$(BIN)/python -m pip install -q -c constraints.txt -e '.[tf,train,dev]'
	@touch $@

$(STAMP4): pyproject.toml constraints-spark4.txt
	@$(MAKE) --no-print-directory check-java
	@test -x $(BIN4)/python || $(PYTHON) -m venv $(VENV_SPARK4)
	$(BIN4)/python -m pip install -q --upgrade "pip>=24"
	$(BIN4)/python -m pip install -q -c constraints-spark4.txt -e '.[tf,dev]'
	@touch $@

# hadoop-aws + AWS SDK bundle for s3a (tests/storage/test_s3a.py, tests/tagging/test_library_s3.py),
# from PyPI, sha256-pinned, cached in
# the git-ignored .cache/jars; a no-op when the verified jars are there.
s3a-jars: setup
	$(BIN)/python infra/fetch_s3a_jars.py

# A TEST STAND-IN Iceberg Spark runtime jar (tests/storage/test_iceberg_jar.py), built from PyPI
# wheels (infra/build_iceberg_jar.py), sha256-pinned, cached in the git-ignored .cache/jars; a
# no-op when the verified jar is there. Production uses the official Maven artifact (--packages).
ICEBERG_JAR := .cache/jars/iceberg-spark-runtime-3.5_2.12-1.10.2-standin.jar

iceberg-jar: setup
	$(BIN)/python infra/build_iceberg_jar.py

# DuckDB reading the library's Iceberg tables offline (infra/iceberg_read.py) in its own venv:
# PyPI's duckdb-extension-iceberg 1.5.5 loads only into duckdb 1.5.5, .venv pins duckdb 2.x.
# Pinned by infra/iceberg-reader-constraints.txt; the extensions are loaded from their wheels'
# files (LOAD '<path>'), nothing is installed into ~/.duckdb. Not part of `make test`.
ICEBERG_READER_VENV ?= .venv-iceberg-reader
ICEBERG_READER_STAMP := $(ICEBERG_READER_VENV)/.prodclf-iceberg-reader-installed

iceberg-reader-env: $(ICEBERG_READER_STAMP)

$(ICEBERG_READER_STAMP): infra/iceberg-reader-constraints.txt
	@test -x $(ICEBERG_READER_VENV)/bin/python || $(PYTHON) -m venv $(ICEBERG_READER_VENV)
	$(ICEBERG_READER_VENV)/bin/python -m pip install -q --upgrade "pip>=24"
	$(ICEBERG_READER_VENV)/bin/python -m pip install -q -c infra/iceberg-reader-constraints.txt \
	  duckdb duckdb-extension-avro duckdb-extension-iceberg pytz
	@touch $@

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

# Headless Chromium renders the run report (tests/tagging/test_report_browser.py).
chromium:
	@command -v chromium >/dev/null || { \
	  echo "Installing Debian's chromium"; \
	  $(SUDO) apt-get install -y chromium >/dev/null || { \
	    $(SUDO) apt-get update >/dev/null && $(SUDO) apt-get install -y chromium >/dev/null; }; }

# Debian's Prometheus Pushgateway: tests/test_observability.py starts it on a loopback port.
PUSHGATEWAY := /usr/bin/prometheus-pushgateway

pushgateway:
	@test -x $(PUSHGATEWAY) || { \
	  echo "Installing Debian's prometheus-pushgateway"; \
	  $(SUDO) apt-get install -y prometheus-pushgateway >/dev/null || { \
	    $(SUDO) apt-get update >/dev/null && $(SUDO) apt-get install -y prometheus-pushgateway >/dev/null; }; }

demo: setup fashion-mnist
	$(BIN)/prodclf demo --workdir $(WORKDIR) --data-dir $(FASHION_MNIST)

# The whole suite on Spark 3.5, then the tagging/evaluation tier on Spark 4, then the
# Airflow DAGs in Airflow's own environment.
test: setup setup-spark4 s3a-jars iceberg-jar iceberg-reader-env
	@$(MAKE) --no-print-directory test-spark35
	@$(MAKE) --no-print-directory test-spark4
	@$(MAKE) --no-print-directory test-airflow

test-spark35: setup s3a-jars iceberg-jar iceberg-reader-env chromium pushgateway
	$(BIN)/python -m pytest $(PYTEST_ARGS)

# Python workers must run the Spark 4 interpreter, not the exported .venv one.
test-spark4: setup-spark4
	PYSPARK_PYTHON=$(abspath $(BIN4))/python $(BIN4)/python -m pytest -m "$(SPARK4_MARKERS)" \
	  $(PYTEST_ARGS)

test-fast: setup
	$(BIN)/python -m pytest -m "not slow and not cluster" $(PYTEST_ARGS)

lint: setup
	$(BIN)/ruff check prodclf jobs tests benchmarks infra
	$(BIN)/ruff format --check prodclf jobs tests benchmarks infra
	$(BIN)/mypy

# The throughput comparison (benchmarks/bench.py; flags in BENCH_ARGS, see docs/benchmarks.md):
# S3 behind 30 ms, 2000 upscaled Grocery Store photos, 3 alternating repetitions.
bench: setup s3a-jars bench-ray-env
	$(BIN)/python benchmarks/bench.py $(BENCH_ARGS)

# Ray (the Ray Data peer) in its own venv, pinned by benchmarks/ray-constraints.txt; never .venv.
RAY_VENV ?= .venv-ray
RAY_STAMP := $(RAY_VENV)/.prodclf-ray-installed

bench-ray-env: $(RAY_STAMP)

$(RAY_STAMP): benchmarks/ray-constraints.txt
	@test -x $(RAY_VENV)/bin/python || $(PYTHON) -m venv $(RAY_VENV)
	$(RAY_VENV)/bin/python -m pip install -q --upgrade "pip>=24"
	$(RAY_VENV)/bin/python -m pip install -q -c benchmarks/ray-constraints.txt \
	  "ray[data]" tensorflow-cpu pillow boto3 numpy pyyaml pyspark
	@touch $@

# An incremental run's selection and commit on 1M synthetic products (no images), in both
# table formats: bench-workdir/incremental-{parquet,iceberg}.json.
bench-incremental: setup iceberg-jar
	$(BIN)/python benchmarks/bench_incremental.py --format parquet $(BENCH_ARGS)
	PRODCLF_SPARK_JARS=$(ICEBERG_JAR) $(BIN)/python benchmarks/bench_incremental.py \
	  --format iceberg $(BENCH_ARGS)

# The results table on real data (Fashion-MNIST, ../shared's Grocery Store): docs/results.md.
results: setup fashion-mnist
	$(BIN)/python benchmarks/results.py --workdir results-workdir --out docs/results.md $(RESULTS_ARGS)

clean:
	rm -rf $(WORKDIR) bench-workdir results-workdir .pytest_cache .mypy_cache .ruff_cache spark-warehouse
