# azprov developer entry points. Everything creates what it needs: a fresh machine only needs python3.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
PREFIX ?= /usr
DESTDIR ?=
export PIP_DISABLE_PIP_VERSION_CHECK := 1

.PHONY: all demo test test-slow test-boot lint bench install wheelhouse clean

all: test

$(BIN)/.stamp: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	touch $@

venv: $(BIN)/.stamp

# A whole provisioning against the embedded fake fabric, in a temporary root and UTS namespace.
demo: $(BIN)/.stamp
	$(BIN)/python scripts/demo.py

# The quick suite: unit, property, CLI and crash tests, plus mypy and ruff (as tests).
test: $(BIN)/.stamp
	$(BIN)/python -m pytest -q -m "not slow and not boot"

# Slower suites (wheel install into a fresh venv, the reliability matrix, bench smoke): run by .ci/run too.
test-slow: $(BIN)/.stamp
	$(BIN)/python -m pytest -q -m "slow and not boot"

lint: $(BIN)/.stamp
	$(BIN)/ruff check .
	$(BIN)/mypy

test-boot: $(BIN)/.stamp
	$(BIN)/python tests/boot/run_boot.py

# First boots of azprov, the article's unit and cloud-init, interleaved (x3), and azprov's reboots: ~30 min.
.PHONY: bench-boot
bench-boot: $(BIN)/.stamp
	$(BIN)/python tests/boot/run_boot.py --scenario compare --repeat 3 --cloud-init --reboots

bench: $(BIN)/.stamp
	$(BIN)/python bench/run.py

install:
	PYTHON=$(PYTHON) PREFIX=$(PREFIX) DESTDIR=$(DESTDIR) sh scripts/install.sh

wheelhouse:
	PYTHON=$(PYTHON) sh scripts/wheelhouse.sh

clean:
	rm -rf $(VENV) build dist *.egg-info .pytest_cache .mypy_cache .ruff_cache .hypothesis
