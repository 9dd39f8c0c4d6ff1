PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
LAB_STAMP := $(VENV)/.installed-notebooks

.PHONY: install test lint docs lab demo bench bench-gpu clean

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e ".[test]"
	touch $(STAMP)

install: $(STAMP)

lint: $(STAMP)
	$(BIN)/ruff check .

test: lint
	$(BIN)/python -m pytest -n 2 --dist loadfile --no-loadscope-reorder -q

docs: $(STAMP)
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict -d site

$(LAB_STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e ".[notebooks]"
	touch $(LAB_STAMP)

lab: $(LAB_STAMP)
	$(BIN)/jupyter lab notebooks/

demo: $(STAMP)
	$(BIN)/python scripts/train.py --config demo --workdir outputs/demo --overwrite --figure outputs/demo.png

bench:
	test -x benchmarks/.venv-bench/bin/python || $(PY) -m venv benchmarks/.venv-bench
	benchmarks/.venv-bench/bin/pip install --quiet -e ".[bench]"
	benchmarks/.venv-bench/bin/python -m benchmarks.run

# The GPU table (section 6 of benchmarks/RESULTS.md) on an NVIDIA GPU: jax with CUDA 12.
bench-gpu:
	test -x benchmarks/.venv-gpu/bin/python || $(PY) -m venv benchmarks/.venv-gpu
	benchmarks/.venv-gpu/bin/pip install --quiet -e ".[dev,scripts,cuda]"
	JAX_PLATFORMS=cuda benchmarks/.venv-gpu/bin/python -m benchmarks.run --gpu

clean:
	rm -rf $(VENV) outputs site .pytest_cache
