# Two commands on a fresh machine: `make zoo` and `make test`. Both create or refresh .venv.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-deps
export PYTHONPATH := $(CURDIR)
export NO_MKDOCS_2_WARNING := 1
export PYTHONHASHSEED := 0
# The engines' telemetry stays off (generator/telemetry.py does the same in process; docs/runtimes.md).
export ORT_DISABLE_TELEMETRY := 1

.PHONY: venv zoo verify test lint unit docs serve bench snippets fuzz clean

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

unit: $(STAMP)
	$(PY) -m pytest

docs: $(STAMP)
	$(VENV)/bin/mkdocs build --strict --site-dir site

# Everything: lint, the conformance run over the committed zoo, the strict docs build, then
# the unit tests (which rebuild the zoo in a temporary folder and compare bytes, and open
# the freshly built site in headless Chromium).
test: lint verify docs unit

serve: $(STAMP)
	$(VENV)/bin/mkdocs serve --dev-addr 127.0.0.1:8000

bench: $(STAMP)
	$(PY) -m generator bench

# Differential fuzzing of the standard GenAI ops on every runtime (at least 200 distinct
# configurations per op: hypothesis draws 240, some twice; `make test` runs 15). Writes
# conformance/results/fuzz.json, then conformance/results/lowered.json (each runtime with and
# without conformance/lowering.py); docs/support.md is built from both. About 7 minutes; then
# the robustness harness with ROBUSTNESS_EXAMPLES draws per property (several minutes more).
FUZZ_EXAMPLES ?= 240
fuzz: $(STAMP)
	CONFORMANCE_FUZZ_EXAMPLES=$(FUZZ_EXAMPLES) CONFORMANCE_FUZZ_MIN_CONFIGURATIONS=200 \
		CONFORMANCE_FUZZ_RESULTS=conformance/results/fuzz.json \
		$(PY) -m pytest conformance/tests/test_fuzz.py -p no:cacheprovider
	$(PY) -m conformance.lowered
	ROBUSTNESS_EXAMPLES=$(ROBUSTNESS_EXAMPLES) $(PY) -m pytest tests/test_robustness.py -p no:cacheprovider

# The robustness harness (tests/test_robustness.py): `make test` draws 8 examples per property.
ROBUSTNESS_EXAMPLES ?= 300

# SITE_URL=https://... turns the posts' site links into absolute links.
snippets: $(STAMP)
	$(PY) -m generator snippets $(if $(SITE_URL),--site-url $(SITE_URL))

clean:
	rm -rf site build .pytest_cache
