# The two commands: `make run` and `make test`. Both build their own virtualenv.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: run test bench debian-deps venv clean

run: $(STAMP)
	$(VENV)/bin/sluice serve --simulate

test: $(STAMP) debian-deps
	$(PY) -m pytest -q

bench: $(STAMP) debian-deps
	$(PY) bench/ingest.py

venv: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	touch $(STAMP)

debian-deps:
	./scripts/install-debian-deps.sh

clean:
	rm -rf $(VENV) var .pytest_cache
