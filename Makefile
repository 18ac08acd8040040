# One command each: `make demo` runs the whole pipeline on SQLite with generated demo data; `make test` runs the
# whole suite, the one CI runs (it needs the PostgreSQL server on 127.0.0.1:5432, or EXPERIMENTTRACKER_TEST_PG_URL);
# `make test-fast` runs the unit and store layers only, for the edit-test loop. All set up their own virtual
# environment on first use.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test test-fast install dev benchmarks clean live-tools serve

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/experimenttracker demo

PYTEST := $(BIN)/pytest -n 2 --dist loadfile -q -p no:cacheprovider
TESTS := experimenttracker_pipeline_tests

# The live tests need nats-server (they start private ones) and promtool/prometheus: installed when missing. The
# Celery test needs Redis on 127.0.0.1:6379 (its broker): installed and started when missing. The browser tests open
# the HTML reports and the Dagster UI in Debian's headless chromium: installed when missing.
live-tools:
	@command -v nats-server >/dev/null 2>&1 || [ -x /usr/sbin/nats-server ] || apt-get install -y nats-server
	@command -v promtool >/dev/null 2>&1 && command -v prometheus >/dev/null 2>&1 || apt-get install -y prometheus
	@command -v redis-server >/dev/null 2>&1 || apt-get install -y redis-server
	@command -v chromium >/dev/null 2>&1 || [ -x /usr/bin/chromium ] || apt-get install -y chromium
	@redis-cli -h 127.0.0.1 -p 6379 ping >/dev/null 2>&1 || redis-server --bind 127.0.0.1 --port 6379 --daemonize yes >/dev/null

test: $(STAMP) live-tools
	$(PYTEST) $(PYTEST_ARGS) $(TESTS)

test-fast: $(STAMP) live-tools
	$(PYTEST) $(PYTEST_ARGS) $(TESTS)/unit $(TESTS)/store

# The Dagster UI on the same data folder and instance as `make demo`.
dev: $(STAMP)
	DAGSTER_HOME=$${DAGSTER_HOME:-$(CURDIR)/data/dagster_home} $(BIN)/dagster dev -w workspace.yaml

benchmarks: $(STAMP)
	$(BIN)/python benchmarks/ingest.py
	$(BIN)/python benchmarks/calibration.py
	$(BIN)/python benchmarks/bus_ingest.py
	$(BIN)/python benchmarks/metrics_scrape.py
	$(BIN)/python benchmarks/orchestration.py

# Prometheus metrics and the health check of the same data folder (see README "Running it live").
serve: $(STAMP)
	$(BIN)/experimenttracker serve

clean:
	rm -rf data .pytest_cache
