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

# One worker per core (-n auto): most of the suite is small end-to-end runs, and two of them side by side keep
# both cores busy where one alone leaves gaps (process start-up, data loading, sandboxed subprocesses).
test: install
	HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 $(PY) -m pytest -q -n auto

reproduce-embedded: install
	$(PY) run.py -m experiment=embedded progress=false
	$(PY) scripts/build_table.py --experiment embedded

figures: install
	$(PY) scripts/make_figures.py

clean-runs:
	rm -rf results/runs results/hydra results/tables

# ---- Paper tables (README "Paper tables") -------------------------------------------------------------------
#   make reproduce-table1 … reproduce-table7          SDS-LoRA Tables 1–7     (experiment sds_table<N>)
#   make reproduce-loram-table1 / -table2 / -table4   LoRAM Tables 1, 2, 4    (experiment loram_table<N>)
#   make reproduce-rank-params                        the rank article's table, computed (no runs)
#   make plan-table1 …, or PLAN=1 make reproduce-…    cells, GPU memory and GPU-hours; nothing run
# Each target runs every sweep feeding the table (table.sweeps in its experiment file; finished cells are
# skipped, unfinished ones resume), then writes results/tables/<table>.md — also when some cells failed, and
# then exits non-zero. ARGS adds overrides, e.g. ARGS="model=llama3_8b" or ARGS="hydra/launcher=submitit_slurm";
# RESULTS moves runs and tables (default results/: results/runs, results/tables).
RESULTS ?= results
PAPER_TABLES := table1 table2 table3 table4 table5 table6 table7 loram-table1 loram-table2 loram-table4
paper_experiment = $(if $(filter loram-%,$(1)),$(subst -,_,$(1)),sds_$(1))

.PHONY: $(addprefix reproduce-,$(PAPER_TABLES)) $(addprefix plan-,$(PAPER_TABLES)) reproduce-rank-params

$(addprefix reproduce-,$(PAPER_TABLES)): reproduce-%: install
ifeq ($(PLAN),1)
	$(PY) scripts/plan.py --experiment $(call paper_experiment,$*) $(ARGS)
else
	@sweeps=$$($(PY) scripts/plan.py --experiment $(call paper_experiment,$*) --sweeps) || exit 2; \
	tables=$$($(PY) scripts/plan.py --experiment $(call paper_experiment,$*) --tables) || exit 2; \
	status=0; \
	for sweep in $$sweeps; do \
	  echo "== $(PY) run.py -m experiment=$$sweep progress=false paths.results_dir=$(RESULTS) $(ARGS)"; \
	  $(PY) run.py -m experiment=$$sweep progress=false paths.results_dir=$(RESULTS) $(ARGS) || status=1; \
	done; \
	for table in $$tables; do \
	  $(PY) scripts/build_table.py --experiment $$table --runs $(RESULTS)/runs --out-dir $(RESULTS)/tables || status=1; \
	done; \
	exit $$status
endif

$(addprefix plan-,$(PAPER_TABLES)): plan-%: install
	$(PY) scripts/plan.py --experiment $(call paper_experiment,$*) $(ARGS)

reproduce-rank-params: install
	$(PY) scripts/rank_params_table.py --out-dir $(RESULTS)/tables

# Per-method step time / memory / FLOPs and the framework tax, then evaluation decoding (reference vs per-row
# stopping), into results/bench/; CUDA shapes when a GPU is visible. BENCH_ARGS goes to the overhead benchmark:
#   make bench BENCH_ARGS="--shape llama3_8b"     1 decoder layer at LLaMA3-8B's real width (CPU: minutes)
.PHONY: bench
bench: install
	$(PY) scripts/bench_overhead.py $(BENCH_ARGS)
	$(PY) scripts/bench_decoding.py

# One prepared GPU check (≤ 8 min on one H100): CUDA-marked tests, LoRA vs SDS-LoRA at LLaMA3-8B layer shapes in
# bf16 beside Table 6, the refresh kernels, decoding throughput -> results/bench/gpu-check.{json,md}.
# DRY_RUN=1: the same script on the CPU with tiny shapes (~1 min; the test suite runs it) -> gpu-check-dry-run.*
.PHONY: gpu-check
gpu-check: install
	HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 $(PY) scripts/gpu_check.py $(if $(filter 1,$(DRY_RUN)),--dry-run)
