PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install test lint demo bench clean

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
	$(BIN)/python -m pytest -n 2 --dist loadfile -q

demo: $(STAMP)
	$(BIN)/python scripts/train.py --config demo --workdir outputs/demo --overwrite --figure outputs/demo.png

bench:
	test -x benchmarks/.venv-bench/bin/python || $(PY) -m venv benchmarks/.venv-bench
	benchmarks/.venv-bench/bin/pip install --quiet -e ".[bench]"
	benchmarks/.venv-bench/bin/python -m benchmarks.run

clean:
	rm -rf $(VENV) outputs .pytest_cache
