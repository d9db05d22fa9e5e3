# The two set-up commands of the README: `make demo` and `make test`.
# Each creates the virtual environment and installs what it needs first.
VENV ?= .venv
BIN := $(VENV)/bin
PYTHON ?= python3

.PHONY: install demo test dev lint clean

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

clean:
	rm -rf $(VENV) .nurture .pytest_cache
