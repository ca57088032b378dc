PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: run test lint clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# torch first, pinned to the CPU build, so nothing later pulls a multi-GB CUDA wheel.
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[dev]'
	touch $(STAMP)

run: $(STAMP)
	$(PY) manage.py launch

test: $(STAMP)
	$(PY) -m pytest $(PYTEST_ARGS)

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy api workers storage

clean:
	rm -rf $(VENV) var

# --- frontend: the web UI's browser libraries, from npm (package-lock.json), copied where staticfiles finds them ---
FRONTEND_VENDOR := frontend/static/frontend/vendor

$(FRONTEND_VENDOR)/chart.umd.min.js: frontend/package.json frontend/package-lock.json
	cd frontend && npm ci --no-audit --no-fund --loglevel=error
	mkdir -p $(FRONTEND_VENDOR)
	cp frontend/node_modules/chart.js/dist/chart.umd.min.js $(FRONTEND_VENDOR)/

.PHONY: frontend
frontend: $(FRONTEND_VENDOR)/chart.umd.min.js
run test: frontend

# --- the browser the e2e tests drive: Debian's chromium (never a browser download) ---
.PHONY: browser
browser:
	@command -v chromium >/dev/null || (apt-get update -qq && apt-get install -y -qq chromium) \
	  || echo "install Debian's chromium (apt-get install chromium) for tests/e2e"
test: browser

# --- Debian's docker-compose: tests/deploy runs `docker-compose config` (it needs no Docker engine) ---
.PHONY: compose
compose:
	@command -v docker-compose >/dev/null || (apt-get update -qq && apt-get install -y -qq docker-compose) \
	  || echo "install Debian's docker-compose (apt-get install docker-compose) for tests/deploy"
test: compose
