# The two commands: `make run` and `make test`. Both build their own virtualenv.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
# Embedded default country data: ip-location-db (CC0), from the npm registry by package name
GEO_PACKAGE := @ip-location-db/geo-whois-asn-country-mmdb@2.3.2026061719
GEO_DIR     := $(VENV)/share/sluice
GEO_MMDB    := $(GEO_DIR)/geo-whois-asn-country.mmdb

.PHONY: run test lint mutate bench screenshots debian-deps venv geodata clean

run: $(STAMP) $(GEO_MMDB)
	$(VENV)/bin/sluice serve --simulate

test: lint $(STAMP) $(GEO_MMDB) debian-deps
	$(PY) -m pytest -q -n auto --maxprocesses 2

# zero findings on src/: ruff (lint and format) and mypy, configured in pyproject.toml
lint: $(STAMP)
	$(VENV)/bin/ruff check src
	$(VENV)/bin/ruff format --check src
	$(VENV)/bin/mypy

bench: $(STAMP) $(GEO_MMDB) debian-deps
	$(PY) bench/ingest.py
	$(PY) bench/enrich.py
	$(PY) bench/store_query.py
	$(PY) bench/alerts.py

# mutation testing of alerts/, flows/sessions.py and query/ against tests/unit ([tool.mutmut]);
# slow (tens of minutes): a tool for finding tests that do not pin what they claim, not a gate
mutate: $(STAMP) $(GEO_MMDB)
	$(PY) -m pip install -q 'mutmut>=3.3'
	$(VENV)/bin/mutmut run; $(VENV)/bin/mutmut results

# refresh the README's screenshots (the browser test, writing into docs/screenshots)
screenshots: $(STAMP) $(GEO_MMDB) debian-deps
	SLUICE_SCREENSHOTS=$(CURDIR)/docs/screenshots $(PY) -m pytest -q tests/web/test_web.py

geodata: $(GEO_MMDB)

$(GEO_MMDB): | $(STAMP)
	./scripts/fetch-geodata.sh "$(GEO_PACKAGE)" "$(GEO_DIR)"
	$(PY) -m sluice.flows.enrich $(GEO_MMDB)

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
