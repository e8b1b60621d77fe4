# Zero Balance Loss. Quick start: `make demo`, then `make test`.
# Both run on the embedded default (SQLite + Redis under var/) unless DATABASE_URL / REDIS_URL are set.

PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: demo test setup lint clean stop

$(STAMP): requirements.txt requirements-dev.txt
	scripts/ensure-packages pkg-config libmariadb-dev
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check --upgrade pip
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements-dev.txt
	touch $@

setup: $(STAMP)
	$(PY) manage.py createdb
	$(PY) manage.py migrate --noinput -v0

demo: setup
	$(PY) manage.py attack --mode all

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

test: setup lint
	$(PY) manage.py makemigrations --check --dry-run -v1
	$(VENV)/bin/pytest

# Stop the embedded Redis server (it keeps running between commands, shared by every process).
stop: $(STAMP)
	$(PY) -c "from pathlib import Path; from project import embedded_redis; embedded_redis.stop(Path('var'))"

clean: stop
	rm -rf var $(VENV) staticfiles

# Multi-instance deployment without Docker (README "Run the multi-instance deployment"):
# N gunicorn instances behind Debian's nginx on 127.0.0.1, rendered from nginx.conf.
CLUSTER_INSTANCES ?= 2
CLUSTER_PORT      ?= 8080

.PHONY: nginx cluster-up cluster-down cluster-status stop-cluster

# RUNLEVEL=1: install without starting Debian's own nginx service (port 80); the cluster runs its own.
nginx:
	RUNLEVEL=1 scripts/ensure-packages nginx

# The deployment tests run nginx -t and a real nginx.
test: nginx

cluster-up: setup nginx
	$(PY) manage.py cluster up --instances $(CLUSTER_INSTANCES) --port $(CLUSTER_PORT)

cluster-down: $(STAMP)
	$(PY) manage.py cluster down

cluster-status: $(STAMP)
	$(PY) manage.py cluster status

# A running cluster uses the embedded Redis and is recorded under var/: `stop` and `clean` stop it first.
stop: stop-cluster

stop-cluster:
	@if [ -f var/cluster/state.json ]; then $(PY) manage.py cluster down; fi

# Browser tests (tests/browser/, admin and visualizer): Playwright drives Debian's Chromium
# (`playwright install` cannot download browsers here); fonts make the screenshots legible.
.PHONY: browser-deps serve
browser-deps:
	scripts/ensure-packages chromium fonts-dejavu-core

test: browser-deps

# The admin and the visualizers on http://127.0.0.1:8000/ (development server; static files served with --insecure).
serve: setup
	$(PY) manage.py runserver --insecure 127.0.0.1:8000

# Benchmarks (README "Benchmarks", BENCHMARKS.md): every strategy against the raw-SQL ceiling and the
# bare hello view, in one run, on this machine (bounded: under 10 minutes). Uses DATABASE_URL /
# REDIS_URL when set, else the machine's MariaDB and Redis under names of its own.
BENCH_DATABASE_URL ?= mysql://root@127.0.0.1:3306/zbl_bench
BENCH_REDIS_URL    ?= redis://127.0.0.1:6379/13

.PHONY: bench bench-smoke
bench: $(STAMP) nginx
	DATABASE_URL=$${DATABASE_URL:-$(BENCH_DATABASE_URL)} REDIS_URL=$${REDIS_URL:-$(BENCH_REDIS_URL)} $(PY) -m bench.run

# The same harness on tiny runs (about half a minute): proves it works, measures nothing (CI).
bench-smoke: $(STAMP) nginx
	DATABASE_URL=$${DATABASE_URL:-$(BENCH_DATABASE_URL)} REDIS_URL=$${REDIS_URL:-$(BENCH_REDIS_URL)} \
		$(PY) -m bench.run --smoke --output-dir var/bench-smoke
