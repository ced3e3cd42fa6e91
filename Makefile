# Two commands on a fresh clone:  make run   (embedded default end to end)   and   make test
VENV   ?= .venv
PYTHON ?= python3
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: install run test reproduce-embedded figures clean-runs

# torch is installed first, alone and pinned, so pip takes the CPU wheel where one is provided locally and
# never resolves an unpinned torch (a multi-GB CUDA build) through another package.
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

run: install
	$(PY) run.py

test: install
	HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 $(PY) -m pytest -q

reproduce-embedded: install
	$(PY) run.py -m experiment=embedded progress=false
	$(PY) scripts/build_table.py --experiment embedded

figures: install
	$(PY) scripts/make_figures.py

clean-runs:
	rm -rf results/runs results/hydra results/tables
