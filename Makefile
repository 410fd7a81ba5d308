# heatjob: `make precompute` runs the job specs in jobs/, `make test` the quick tests,
# `make test-slow` the slow ones (whole jobs, Ray clusters, LXT), `make test-all` both.
# Both set up .venv from scratch first (Python 3.11+, nothing else needed).

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
HEATJOB := $(VENV)/bin/heatjob
# torch comes first and pinned, so that no later install pulls another build.
TORCH_SPEC ?= torch==2.14.1 torchvision==0.29.1
JOBS ?= jobs/demo.toml
PYTEST_ARGS ?=

.PHONY: install test test-fast test-slow test-all lint bench precompute demo-model demo-vit-model clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet $(TORCH_SPEC)
	$(PY) -m pip install --quiet -e '.[dev]'
	$(PY) -m pip install --quiet --no-deps lxt==2.1
	touch $@

test: install
	$(PY) -m pytest -m "not slow" $(PYTEST_ARGS)

test-slow: install
	$(PY) -m pytest -m slow $(PYTEST_ARGS)

test-all: install
	$(PY) -m pytest $(PYTEST_ARGS)

test-fast: test  # the old name of `make test`

lint: install
	$(VENV)/bin/ruff check heatjob tests bench scripts

# Engine vs zennit vs plain forward+backward, the whole job vs a plain zennit loop, each method
# kind's time per heatmap vs plain forward+backward, metrics vs Quantus; JSON into
# bench/results/, then the README tables printed from it.
bench: install
	$(PY) bench/run.py --out bench/results
	$(PY) bench/job.py --out bench/results
	$(PY) bench/methods_bench.py --out bench/results
	$(PY) bench/metrics_bench.py --out bench/results
	$(PY) bench/faithfulness_bench.py --rows 8 --repeats 2 --out bench/results
	$(PY) bench/table.py bench/results

# Each job: submit (resumes a partial store), then merge with a JSON report beside the store.
precompute: install
	@set -e; for job in $(JOBS); do \
		store=$$($(PY) -m heatjob.spec store-path $$job); \
		echo "== $$job -> $$store"; \
		$(HEATJOB) submit $$job; \
		$(HEATJOB) merge $$store --json $$store.metrics.json; \
	done

# Retrain the demo model that jobs/demo.toml uses (the repo ships the result).
demo-model: install
	$(PY) scripts/train_demo_model.py --out models/small_cnn_shapes.pt

# Retrain the small ViT that jobs/demo-vit.toml uses (the repo ships the result).
demo-vit-model: install
	$(PY) scripts/train_demo_model.py --arch small_vit --samples 10000 --epochs 7 \
		--threads 2 --out models/small_vit_shapes.pt

clean:
	rm -rf out .pytest_cache .ruff_cache
