# Two commands set everything up on a fresh machine: `make test` and `make demo`.
# Each creates .venv if it is missing and installs the pinned requirements and the package
# (editable); the stamp file makes a second call a no-op set-up.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.attnconv-installed
# pytest-xdist: one worker per core (`make test PYTEST_ARGS=` runs in one process).
PYTEST_ARGS ?= -n auto --dist worksteal

.PHONY: setup test test-browser lint demo bench clean

setup: $(STAMP)

$(STAMP): requirements.txt pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet -r requirements.txt
	$(BIN)/python -m pip install --quiet --no-deps --no-build-isolation -e .
	@touch $(STAMP)

test: $(STAMP) test-browser
	$(BIN)/ruff check src tests
	$(BIN)/attnconv bench --quick
	$(BIN)/python -m pytest $(PYTEST_ARGS)

# Headless Chromium + chromedriver for the explorer's browser test (apt-get; no-op if present).
test-browser:
	@bash scripts/install-test-browser.sh

# ruff, the import contract (imports only go down the package's layers) and the function-length cap.
lint: $(STAMP)
	$(BIN)/ruff check src tests
	$(BIN)/python -m pytest -q -p no:cacheprovider tests/test_import_contract.py tests/test_function_length.py

demo: $(STAMP)
	$(BIN)/attnconv demo --overwrite

bench: $(STAMP)
	$(BIN)/attnconv bench

clean:
	rm -rf $(VENV) build dist src/*.egg-info .pytest_cache .ruff_cache .hypothesis
