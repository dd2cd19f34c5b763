# The README's two commands: `make demo` and `make test`. Everything else is a helper.
PYTHON ?= python3.11
VENV   := .venv
PY     := $(VENV)/bin/python
# the installer of `make venv`: uv (pinned; fast) unless INSTALLER=pip
INSTALLER ?= uv
UV_VERSION ?= 0.13.9
export PATH := $(CURDIR)/$(VENV)/bin:$(PATH)

.PHONY: venv demo test test-fast lint lock bench clean services-down

$(VENV)/.installed: requirements.txt pyproject.toml
	@command -v $(PYTHON) >/dev/null 2>&1 || { echo "need $(PYTHON) on PATH (or: make PYTHON=python3 ...)"; exit 1; }
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@# uv installs the same pins as pip in ~16 s instead of ~62 s (cache warm, bytecode compiled in parallel);
	@# INSTALLER=pip, or any uv failure (no uv wheel, an index only pip is configured for), takes plain pip
	@if [ "$(INSTALLER)" != pip ] && $(PY) -m pip install --quiet --disable-pip-version-check "uv==$(UV_VERSION)" >/dev/null 2>&1 \
	    && $(VENV)/bin/uv pip install --python $(PY) --quiet --compile-bytecode -r requirements.txt \
	    && $(VENV)/bin/uv pip install --python $(PY) --quiet --no-deps -e . ; then \
	  echo "installed requirements.txt with uv $(UV_VERSION)"; \
	else \
	  echo "installing requirements.txt with pip$(if $(filter pip,$(INSTALLER)),, (uv $(UV_VERSION) was not usable))"; \
	  $(PY) -m pip install --quiet --upgrade pip && $(PY) -m pip install --quiet -r requirements.txt \
	    && $(PY) -m pip install --quiet --no-deps -e . ; \
	fi
	$(PY) -m ml --log-level WARNING warmup  # numba kernels compiled once, not by every first task
	touch $@

venv: $(VENV)/.installed ## create .venv and install the locked requirements

demo: venv ## set up and run the whole pipeline end to end on the embedded services
	$(PY) -m ml demo $(ARGS)

test: venv ## set up and run the whole test suite
	$(PY) -m pytest -q $(ARGS)

test-fast: venv ## unit tests only
	$(PY) -m pytest -q tests/unit tests/dags

lock: venv ## regenerate requirements.txt from the current .venv
	$(PY) -m pip freeze --exclude-editable | sort > requirements.lock.tmp && mv requirements.lock.tmp requirements.txt

bench: venv ## run every benchmark under bench/ (writes docs/BENCHMARKS.md sections)
	for b in bench/bench_*.py; do $(PY) $$b || exit 1; done

services-down: venv
	$(PY) -m ml services down

clean: services-down
	rm -rf .local
