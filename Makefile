# unityctl: the two commands a fresh machine needs are `make demo` and `make test` (see README.md).
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-stamp

.PHONY: demo test test-sqlite system-deps venv bench bench-all clean

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check --upgrade pip
	$(PY) -m pip install -q --disable-pip-version-check -e '.[dev]'
	touch $(STAMP)

venv: $(STAMP)

## Install unityctl and run its main job on this machine (SQLite in the XDG data dir, or $UNITYCTL_DATA_DIR).
demo: venv
	scripts/demo

## Install every system package and service the tests need, then run the whole suite on SQLite and PostgreSQL.
test: system-deps venv
	scripts/run-tests

test-sqlite: venv
	scripts/run-tests --sqlite-only

system-deps:
	scripts/install-system-deps

## Benchmarks (each prints its figures beside its baseline, measured in the same run).
bench: system-deps venv
	$(PY) bench/startup.py

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .hypothesis

bench-all: system-deps venv
	$(PY) bench/startup.py
	$(PY) bench/deploy.py
	$(PY) bench/collect.py
	$(PY) bench/status.py
