# Two commands set everything up:  `make run`  and  `make test`.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
PROFILE ?= workshop
STAMP  := $(VENV)/.installed

.PHONY: run test lint unit notebooks data install clean benchmarks student browser-test

install: $(STAMP)

# torch: install the exact CPU build only when no torch is importable (Colab and
# GPU machines keep their own); the package itself declares a range.
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/python -m pip install --quiet "torch==2.13.0" || $(BIN)/python -m pip install --quiet "torch>=2.1"
	$(BIN)/python -m pip install --quiet -e ".[test]"
	touch $(STAMP)

data: $(STAMP)
	$(BIN)/mstoolkit data prepare --profile $(PROFILE)

run: data
	$(BIN)/mstoolkit notebooks run --profile $(PROFILE) --out build

unit: $(STAMP)
	$(BIN)/python -m pytest -m "not notebook and not browser" -q

notebooks: $(STAMP)
	$(BIN)/python -m pytest -m "notebook and not browser" -q

# lint (package, tests, benchmarks and notebooks), then every test and docstring example but the browser's,
# in TEST_WORKERS processes (pytest-xdist, one test file per process at a time): the notebooks' run
# (tests/test_notebooks.py, whose session fixture runs every notebook once) goes on in one process while
# the other takes the remaining files. TEST_WORKERS=0: one process.
TEST_WORKERS ?= 2
test: lint
	$(BIN)/python -m pytest -q -m "not browser" -n $(TEST_WORKERS) --dist loadfile

lint: $(STAMP)
	$(BIN)/ruff check .

# JupyterLab in Debian's chromium, driven by Playwright (no browser download).
browser-test: $(STAMP)
	command -v chromium >/dev/null || (apt-get update -qq && apt-get install -y -qq chromium) \
		|| echo "chromium could not be installed: the browser tests will be skipped"
	$(BIN)/python -c "import playwright" 2>/dev/null || $(BIN)/python -m pip install --quiet "playwright>=1.40" \
		|| echo "playwright could not be installed: the browser tests will be skipped"
	test -d build/quick/html || $(BIN)/mstoolkit notebooks run --profile quick --out build/quick
	$(BIN)/python -m pytest -q -m browser tests/browser

student: $(STAMP)
	$(BIN)/mstoolkit notebooks student --out build/student

benchmarks: $(STAMP)
	for f in benchmarks/bench_*.py; do $(BIN)/python $$f || exit 1; done

clean:
	rm -rf build .pytest_cache
