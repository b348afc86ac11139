# azprov developer entry points. Everything creates what it needs: a fresh machine only needs python3.
# Tests, the demo and the benchmark's agent runs happen inside scripts/isolated (a network namespace with
# only loopback up); whatever needs the package index (the venv, wheels, the benchmark's peers) comes first.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
PREFIX ?= /usr
DESTDIR ?=
ISOLATED := scripts/isolated
# What `make test-slow` installs offline inside the namespace (the wheel tests build and install wheels).
TEST_WHEELS := $(VENV)/test-wheels
VERSION := $(shell sed -n 's/^version *= *"\(.*\)"/\1/p' pyproject.toml | head -n 1)
export PIP_DISABLE_PIP_VERSION_CHECK := 1

.PHONY: all venv demo test test-slow test-boot lint bench install wheelhouse deb clean

all: test

$(BIN)/.stamp: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	touch $@

venv: $(BIN)/.stamp

$(TEST_WHEELS)/.stamp: $(BIN)/.stamp
	rm -rf $(TEST_WHEELS)
	$(BIN)/pip download -q -d $(TEST_WHEELS) . python-statemachine 'setuptools>=61' wheel
	$(BIN)/pip download -q -d $(TEST_WHEELS) --no-deps --only-binary=:all: --implementation py --abi none \
	  --platform any --python-version 3.9 'tomli>=1.1'
	touch $@

# A whole provisioning against the embedded fake fabric, in a temporary root and UTS namespace.
# SCENARIO=ready|503|410|imds-down|all (scripts/demo.py --help).
demo: $(BIN)/.stamp
	$(ISOLATED) $(BIN)/python scripts/demo.py $(if $(SCENARIO),--scenario $(SCENARIO))

# The quick suite: unit, property, CLI and crash tests, plus mypy and ruff (as tests).
test: $(BIN)/.stamp
	$(ISOLATED) $(BIN)/python -m pytest -q -m "not slow and not boot"

# Slower suites (wheel install into a fresh venv, the reliability matrix, bench smoke): run by .ci/run too.
# Also every property test with all the examples its settings ask for (`make test` tries a quarter of them).
# pip inside the namespace installs only from the wheels fetched beforehand.
test-slow: $(BIN)/.stamp $(TEST_WHEELS)/.stamp
	PIP_NO_INDEX=1 PIP_FIND_LINKS=$(abspath $(TEST_WHEELS)) AZPROV_PROPERTY_EXAMPLES=full \
	  $(ISOLATED) $(BIN)/python -m pytest -q -m "(slow or hypothesis) and not boot"

lint: $(BIN)/.stamp
	$(BIN)/ruff check .
	$(BIN)/mypy

# Boots QEMU guests with user-mode networking (restrict=on): fetches its image first, so not isolated here.
test-boot: $(BIN)/.stamp
	$(BIN)/python tests/boot/run_boot.py

# First boots of azprov, the article's unit and cloud-init, interleaved (x3), and azprov's reboots: ~30 min.
.PHONY: bench-boot
bench-boot: $(BIN)/.stamp
	$(BIN)/python tests/boot/run_boot.py --scenario compare --repeat 3 --cloud-init --reboots

# The peers and the benchmark venvs are fetched first (apt, PyPI); the measured runs are isolated.
bench: $(BIN)/.stamp
	$(BIN)/python bench/peers.py bench/cache >/dev/null
	$(ISOLATED) $(BIN)/python bench/run.py

# N agents at once against one fake fabric, in a private network namespace (bench/README.md). N=20 for a quick look.
bench-fleet: $(BIN)/.stamp
	$(BIN)/python bench/fleet.py $(if $(N),-n $(N))

install:
	PYTHON=$(PYTHON) PREFIX=$(PREFIX) DESTDIR=$(DESTDIR) sh scripts/install.sh

wheelhouse:
	PYTHON=$(PYTHON) sh scripts/wheelhouse.sh

# dist/azprov_<version>_all.deb, built by dpkg-buildpackage from debian/ (installs the Build-Depends).
deb:
	sh scripts/build-deb.sh

clean:
	rm -rf $(VENV) .venv-py* build dist *.egg-info .pytest_cache .mypy_cache .ruff_cache .hypothesis .pybuild
