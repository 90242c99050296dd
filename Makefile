# One command per job. Each sets up the virtual environment first if it is missing or out of date.
#   make demo   build tiny-random, start the service, stream the bundled WAV through it, print the events
#   make test   the whole test suite (what .ci/run runs)
#   make serve  the service with settings from the environment / .env

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp

.PHONY: install demo test serve clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	# torch first and pinned: 2.13.0 resolves to the CPU wheel here; an unpinned torch pulls GBs of CUDA packages.
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e ".[test]"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/parastream demo

test: $(STAMP)
	$(BIN)/python -m pytest

serve: $(STAMP)
	$(BIN)/parastream serve

clean:
	rm -rf $(VENV) .cache
