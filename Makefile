PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# Reproducible install on this machine; other CUDA versions: pip install -e .[dev] with your own torch.
TORCH_PINS := torch==2.14.1 torchvision==0.29.1

.PHONY: install test test-fast lint bench demo clean

install:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q $(TORCH_PINS)
	$(BIN)/pip install -q -e ".[dev]" $(TORCH_PINS)

test:
	$(BIN)/python -m pytest -q

test-fast:
	$(BIN)/python -m pytest -q -m "not slow"

lint:
	$(BIN)/ruff check lightning_modules datamodules callbacks experiments search medcbir_io tests benchmarks

bench:
	$(BIN)/python benchmarks/retrieval_search.py
	$(BIN)/python benchmarks/lightning_overhead.py

demo:
	$(BIN)/python -m experiments fit --config experiments/configs/simsiam_hu_demo.yaml

clean:
	rm -rf runs lightning_logs .pytest_cache
