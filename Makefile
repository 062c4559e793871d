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

.PHONY: venv zoo verify test lint unit unit-core unit-site docs docs-then-site serve bench snippets fuzz onnx-cases upstream clean

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
	$(PY) -m ruff check generator proposals tests conformance upstream
	$(PY) -m ruff format --check generator proposals tests conformance upstream

# The unit tests on two workers (pytest-xdist; an idle worker takes tests queued for the other);
# PYTEST_WORKERS=0 runs them in this process.
PYTEST_WORKERS ?= 2
PYTEST := $(PY) -m pytest -n $(PYTEST_WORKERS) --dist worksteal --durations=25
unit: $(STAMP)
	$(PYTEST)

# The unit tests that do not read the built site, and those that do (marked `site`).
unit-core: $(STAMP)
	$(PYTEST) -m "not site"

# In one process: the browser tests share one module fixture that screens every page, and in
# `make test` they run beside unit-core, which has the two workers.
unit-site: $(STAMP)
	$(PY) -m pytest -n 0 --durations=10 -m site

docs: $(STAMP)
	$(VENV)/bin/mkdocs build --strict --site-dir site

# Everything: lint, the conformance run over the committed zoo (the docs read its matrix, and
# the scaffold test's copy reuses its cells), then the unit tests that do not read the site
# (they rebuild the zoo in a temporary folder and compare bytes) beside the strict docs build
# followed at once by the tests that open the freshly built site in headless Chromium. Each
# part's output is printed when it ends.
test: lint verify
	$(MAKE) --no-print-directory --output-sync=target -j2 unit-core docs-then-site

docs-then-site: docs
	$(MAKE) --no-print-directory unit-site

serve: $(STAMP)
	$(VENV)/bin/mkdocs serve --dev-addr 127.0.0.1:8000

# llama-cpp-python compiles llama.cpp (pyproject's `bench` extra): only the bench installs it, and a
# failed build leaves llama.cpp skipped with one line, never a failed bench.
BENCH_STAMP := $(VENV)/.installed-bench
$(BENCH_STAMP): $(STAMP)
	$(PY) .ci/requirements.py --extra bench pyproject.toml > $(VENV)/requirements-bench.txt
	$(PY) -m pip install -q -r $(VENV)/requirements-bench.txt || echo "llama-cpp-python did not build: the bench skips llama.cpp"
	touch $(BENCH_STAMP)

bench: $(BENCH_STAMP)
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

# onnx's own backend node cases for the GenAI ops (Attention at every opset, TensorScatter,
# RotaryEmbedding, RMSNormalization, SwiGLU, LinearAttention: 140 cases) on every runtime of
# the matrix, against the statuses committed in conformance/results/onnx_cases.json (the
# support page's table). About 8 minutes on 2 cores; `make test` reruns a sample.
onnx-cases: $(STAMP)
	$(PY) -m conformance.onnx_cases

# The next onnx release: .venv-upstream holds onnx-weekly (GroupedMatMul-29) and reads every
# other package from .venv without writing to it (upstream/env.py). Runs the GroupedMatMul
# checks against onnx-weekly, the opset-29 MoE zoo (upstream/zoo/) on onnx-weekly's reference,
# and the upstream-ready backend cases (upstream/node/). See upstream/README.md.
UPSTREAM_PY := .venv-upstream/bin/python
upstream:
	@test -x $(PY) || { echo "make upstream: .venv is missing; run make venv first" >&2; exit 2; }
	@$(PY) -m upstream.env
	$(UPSTREAM_PY) -m upstream.grouped_matmul
	$(UPSTREAM_PY) -m upstream.zoo --verify
	$(UPSTREAM_PY) -m pytest upstream/tests -p no:cacheprovider

# SITE_URL=https://... turns the posts' site links into absolute links.
snippets: $(STAMP)
	$(PY) -m generator snippets $(if $(SITE_URL),--site-url $(SITE_URL))

clean:
	rm -rf site build .pytest_cache
