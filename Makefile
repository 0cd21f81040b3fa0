# The two commands of the README: `make demo` and `make test`.
# Both create or refresh the virtual environment and install what they need.
# The venv is made from Debian's python3 with system site packages so that
# Debian's python3-libnbd (built for that interpreter) imports in tests.
SYS_PYTHON ?= /usr/bin/python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test bench deps venv clean

deps:
	@scripts/ensure-deps

$(STAMP): pyproject.toml | deps
	$(SYS_PYTHON) -m venv --system-site-packages $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check -e '.[test]'
	@touch $(STAMP)

venv: deps $(STAMP)

test: venv
	$(PY) -m pytest -q tests

demo: venv
	$(PY) -m blockmirror.demo

bench: venv
	$(PY) bench/run.py

clean:
	rm -rf $(VENV) build src/*.egg-info
