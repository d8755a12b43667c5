# Two entry points for a fresh machine (see README):
#   make demo   set up .venv and run the demo on scanpy's bundled pbmc68k_reduced
#   make test   set up .venv and run the test suite (what CI runs)
# torch is pinned to the CPU build by constraints.txt: an unpinned torch pulls a multi-GB CUDA build.

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.scadv-installed

.PHONY: demo test docs bench clean

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -c constraints.txt -e ".[test,docs]"
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/scadv demo --out scadv_demo --realistic --detector

test: $(STAMP)
	$(PY) -m pytest

docs: $(STAMP)
	$(PY) -m sphinx -W --keep-going -b html docs docs/_build/html

bench: $(STAMP)
	$(PY) -m pip install --quiet -c constraints.txt -e ".[bench]"
	$(PY) benchmarks/chain_time.py
	$(PY) benchmarks/pgd_speed.py

clean:
	rm -rf $(VENV) docs/_build docs/generated scadv_demo
