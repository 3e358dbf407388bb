# The README's two commands: `make demo` and `make test` (and `make serve`, a local estate to try the CLI on).
# Each sets up what it needs first:
# a virtualenv with pinned Python dependencies, Azurite (npm) under tools/, and for `make test`
# checkov in its own virtualenv (tools/checkov-venv) so its pins never meet the app's,
# Debian's Chromium for the report page's browser test, Debian's shellcheck for the scripts, and
# a Python 3.13 virtualenv (.venv313) for the worker tier, which runs kvlink inside the Functions worker.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.deps-installed
AZURITE := tools/node_modules/.bin/azurite-table
CHECKOV_VERSION := 3.3.30
CHECKOV_VENV := tools/checkov-venv
CHECKOV_STAMP := $(CHECKOV_VENV)/.checkov-$(CHECKOV_VERSION)
CHECKOV_REPORT := $(CHECKOV_VENV)/report.json
VENV313 := .venv313
STAMP313 := $(VENV313)/.deps-installed

.PHONY: setup demo serve test test-worker lint infra-check shellcheck browser bench clean

setup: $(STAMP) $(AZURITE)

$(STAMP): requirements.txt requirements-dev.txt
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "kvlink needs Python 3.11 or newer")'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --upgrade pip
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -r requirements-dev.txt
	touch $@

# Python 3.13 (what Azure runs) found by scripts/find-python313.sh; fails saying where it looked.
$(STAMP313): requirements.txt requirements-worker.txt
	python313="$$(bash scripts/find-python313.sh)" && "$$python313" -m venv $(VENV313)
	$(VENV313)/bin/python -m pip install --quiet --disable-pip-version-check --upgrade pip
	$(VENV313)/bin/python -m pip install --quiet --disable-pip-version-check -r requirements-worker.txt
	touch $@

$(AZURITE): tools/package.json tools/package-lock.json
	npm ci --prefix tools --no-audit --no-fund --loglevel=error
	touch $@

$(CHECKOV_STAMP):
	$(PYTHON) -m venv $(CHECKOV_VENV)
	$(CHECKOV_VENV)/bin/python -m pip install --quiet --disable-pip-version-check checkov==$(CHECKOV_VERSION)
	touch $@

# Static analysis of the Bicep templates. Fails on any failed check that the template does not skip
# with a reason (`// checkov:skip=CKV_...:reason`), and on any .bicep file checkov cannot parse:
# checkov itself only counts parsing errors and still exits 0.
infra-check: $(CHECKOV_STAMP)
	$(CHECKOV_VENV)/bin/checkov -d infra --framework bicep --quiet --compact --skip-download \
		--output cli --output json --output-file-path console,$(CHECKOV_REPORT)
	$(CHECKOV_VENV)/bin/python -c 'import json, sys; s = json.load(open(sys.argv[1]))["summary"]; e = s["parsing_errors"]; \
		sys.exit("infra-check: checkov could not parse %d Bicep file(s); tests/test_infra.py names them" % e if e \
		else "infra-check: checkov found no Bicep resources under infra/" if not s["resource_count"] else 0)' $(CHECKOV_REPORT)

demo: setup
	$(BIN)/python -m kvlink_core demo

# Runs until Ctrl-C; in another shell, `source .kvlink-serve/env.sh` and use `python -m kvlink_core`.
serve: setup
	$(BIN)/python -m standins serve --env-file .kvlink-serve/env.sh

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

# Debian's chromium for tests/test_report_browser.py (apt-get; a no-op once /usr/bin/chromium exists,
# or when KVLINK_SKIP_BROWSER=1, which skips the browser test as well).
browser:
	bash scripts/install-chromium.sh

# Every shell script (the azd hooks, the installers) through Debian's shellcheck, installed first if missing.
shellcheck:
	bash scripts/install-shellcheck.sh
	shellcheck scripts/*.sh scripts/lib/*.sh

# The worker tier: every trigger as the host sends it, through azure_functions_runtime on 3.13,
# with the main suite's stand-ins and Azurite (its fixtures loaded as a plugin).
test-worker: $(STAMP313) $(AZURITE)
	PYTHONPATH=. $(VENV313)/bin/python -m pytest -p tests.conftest tests_worker

test: lint infra-check shellcheck browser test-worker
	$(BIN)/python -m pytest

clean:
	rm -rf $(VENV) $(VENV313) $(CHECKOV_VENV) tools/node_modules .kvlink-serve .pytest_cache .mypy_cache .ruff_cache .coverage

bench: setup
	$(BIN)/python -m bench
