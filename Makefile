# gridvm: the two commands in the README are `make demo` and `make test`.
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: setup setup-test demo test unit lint bench clean

setup:
	bash scripts/setup-host.sh

setup-test:
	bash scripts/setup-host.sh --with-postgres

## Set everything up, build the demo image, boot it and run the main job end to end.
demo: setup
	$(PY) -m gridvm demo

## Set everything up and run the whole test suite (real VMs included).
test: setup-test lint
	GRIDVM_TEST_POSTGRES_URL="$$(cat /var/lib/gridvm/test-postgres-url)" $(PY) -m pytest -p no:cacheprovider

## Fast tests only (no VM boots).
unit: setup
	$(PY) -m pytest -p no:cacheprovider -m "not vm"

## ruff (style, complexity) and the layer contract of architecture.md (import-linter).
lint:
	$(PY) -m ruff check .
	$(VENV)/bin/lint-imports

## Benchmarks: each prints ratios against a baseline measured in the same run, then one JSON line.
bench: setup
	$(PY) bench/boot.py
	$(PY) bench/tsi.py
	$(PY) bench/match.py
	$(PY) bench/hosts.py
	$(PY) bench/e2e.py
	$(PY) bench/rest.py
	$(PY) bench/layers.py
	$(PY) bench/cluster.py
	$(PY) bench/restore.py

clean:
	rm -rf var build *.egg-info
