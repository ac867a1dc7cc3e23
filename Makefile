# Pillarbox — the two commands of the README, and a few more.
#   make serve   create .venv, install, run a complete server on the development defaults
#   make test    create .venv if needed, run the whole test suite
#   make bench   benchmarks against a private Postfix (bench/README.md)

PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: serve test bench venv clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	touch $(STAMP)

venv: $(STAMP)

serve: $(STAMP)
	$(VENV)/bin/pillarbox serve

test: $(STAMP)
	$(PY) -m pytest -q

bench: $(STAMP)
	bash bench/smtp-throughput

clean:
	rm -rf $(VENV) build *.egg-info src/*.egg-info .pytest_cache .hypothesis
