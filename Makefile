# The two set-up commands of the README: `make demo` and `make test`.
# Each creates the virtual environment and installs what it needs first.
VENV ?= .venv
BIN := $(VENV)/bin
PYTHON ?= python3

.PHONY: install demo test dev lint mutation clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e ".[dev]"
	touch $@

demo: install
	$(BIN)/nurture demo

test: install
	$(BIN)/ruff check .
	$(BIN)/pytest -q

dev: install
	$(BIN)/nurture dev

lint: install
	$(BIN)/ruff check . && $(BIN)/ruff format --check .

# Mutation testing of the pure modules, one worker, in scratch copies (minutes; not in CI).
# docs/testing.md: what it runs, the kill rates and the equivalent mutants set aside.
mutation: install
	test -x $(BIN)/mutmut || $(BIN)/pip install --quiet -e ".[dev,mutation]"
	$(BIN)/python scripts/mutation.py $(MODULES)

clean:
	rm -rf $(VENV) .nurture .pytest_cache
