# Two commands do all set-up on a fresh machine (Python 3.12+ needed):
#   make demo   run the gateway end to end on embedded defaults
#   make test   run the full test suite (what .ci/run runs)

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp

.PHONY: demo test lint bench clean

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 12) else 1)' || \
		{ echo "hoopgw needs Python 3.12 or newer (mitmproxy 12); set PYTHON=python3.12"; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	@touch $@

demo: $(STAMP)
	$(BIN)/python -m scripts.demo

test: $(STAMP)
	bash scripts/ensure_browser.sh
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/pytest

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

bench: $(STAMP)
	$(BIN)/python -m scripts.bench_recorder

clean:
	rm -rf $(VENV) var .pytest_cache .ruff_cache
