# Two commands on a fresh machine: `make zoo` and `make test`. Both create or refresh .venv.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-deps
export PYTHONPATH := $(CURDIR)
export NO_MKDOCS_2_WARNING := 1
export PYTHONHASHSEED := 0

.PHONY: venv zoo verify test lint unit unit-core unit-site docs serve bench snippets fuzz clean

venv: $(STAMP)

# Reinstall only when pyproject.toml changes. Every dependency, extra and dependency group is
# read from it (.ci/requirements.py); the project itself is used from the source tree
# (PYTHONPATH), so several checkouts can share one .venv.
$(STAMP): pyproject.toml .ci/requirements.py
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) .ci/requirements.py pyproject.toml > $(VENV)/requirements.txt
	$(PY) -m pip install -q -r $(VENV)/requirements.txt
	touch $(STAMP)

zoo: $(STAMP)
	$(PY) -m generator zoo

verify: $(STAMP)
	$(PY) -m generator verify

lint: $(STAMP)
	$(PY) -m ruff check generator proposals tests conformance
	$(PY) -m ruff format --check generator proposals tests conformance

# The unit tests on two workers (pytest-xdist; an idle worker takes tests queued for the other);
# PYTEST_WORKERS=0 runs them in this process.
PYTEST_WORKERS ?= 2
PYTEST := $(PY) -m pytest -n $(PYTEST_WORKERS) --dist worksteal --durations=25
unit: $(STAMP)
	$(PYTEST)

# The unit tests that do not read the built site, and those that do (marked `site`).
unit-core: $(STAMP)
	$(PYTEST) -m "not site"

unit-site: $(STAMP)
	$(PYTEST) -m site

docs: $(STAMP)
	$(VENV)/bin/mkdocs build --strict --site-dir site

# Everything: lint, the conformance run over the committed zoo (the docs read its matrix, and
# the scaffold test's copy reuses its cells), then the strict docs build beside the unit tests
# that do not read the site (they rebuild the zoo in a temporary folder and compare bytes),
# then those that open the freshly built site in headless Chromium. Each part's output is
# printed when it ends.
test: lint verify
	$(MAKE) --no-print-directory --output-sync=target -j2 docs unit-core
	$(MAKE) --no-print-directory unit-site

serve: $(STAMP)
	$(VENV)/bin/mkdocs serve --dev-addr 127.0.0.1:8000

bench: $(STAMP)
	$(PY) -m generator bench

# Differential fuzzing of the standard GenAI ops on every runtime (at least 200 distinct
# configurations per op: hypothesis draws 240, some twice; `make test` runs 15). Writes
# conformance/results/fuzz.json, then conformance/results/lowered.json (each runtime with and
# without conformance/lowering.py); docs/support.md is built from both. About 7 minutes.
FUZZ_EXAMPLES ?= 240
fuzz: $(STAMP)
	CONFORMANCE_FUZZ_EXAMPLES=$(FUZZ_EXAMPLES) CONFORMANCE_FUZZ_MIN_CONFIGURATIONS=200 \
		CONFORMANCE_FUZZ_RESULTS=conformance/results/fuzz.json \
		$(PY) -m pytest conformance/tests/test_fuzz.py -p no:cacheprovider
	$(PY) -m conformance.lowered

# SITE_URL=https://... turns the posts' site links into absolute links.
snippets: $(STAMP)
	$(PY) -m generator snippets $(if $(SITE_URL),--site-url $(SITE_URL))

clean:
	rm -rf site build .pytest_cache
