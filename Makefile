# Quickstart: `make demo` (set-up + the end-to-end job) and `make test`.
PYTHON ?= python3.11
VENV ?= .venv
PY := $(VENV)/bin/python
WORKDIR ?= workdirs/demo
PYTEST_ARGS ?= -n 2
# glibc's malloc backs large blocks with transparent huge pages (glibc >= 2.35; others ignore the setting). XLA:CPU
# allocates each step's temporary buffer afresh, and with 4 KiB pages every step faults it in page by page: the demo's
# train step is about a fifth faster with huge pages, with the same results (README, "Speed on CPU").
export GLIBC_TUNABLES := $(if $(GLIBC_TUNABLES),$(GLIBC_TUNABLES):)glibc.malloc.hugetlb=1

.PHONY: demo test lint venv clean

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip

$(VENV)/.runtime: requirements.txt pyproject.toml | $(PY)
	$(PY) -m pip install -q -r requirements.txt
	$(PY) -m pip install -q --no-deps -e .
	touch $@

$(VENV)/.test: requirements-test.txt $(VENV)/.runtime
	$(PY) -m pip install -q -r requirements-test.txt
	@# libtpu beside the venv, not in it (JAX would look for TPUs at every start): the ahead-of-time TPU
	@# compile test puts it on PYTHONPATH, and skips when it could not be installed.
	$(PY) -m pip install -q --no-deps --target $(VENV)/libtpu 'libtpu==0.0.42.*' \
	  || echo "warning: libtpu not installed; the TPU compile test will skip (fail under CI=1)" >&2
	touch $@

venv: $(VENV)/.runtime

demo: $(VENV)/.runtime
	$(PY) -m cogito_jax.demo --workdir $(WORKDIR)

test: $(VENV)/.test
	$(PY) -m pytest $(PYTEST_ARGS)

lint: $(VENV)/.test
	$(VENV)/bin/ruff check .

clean:
	rm -rf $(VENV) workdirs .pytest_cache .ruff_cache .jax_test_cache
