# Two entry points for a fresh machine (see README):
#   make train   - set up .venv, then train the main job's model on the data found (bus-mtl main)
#   make test    - set up .venv, then run the whole test suite
VENV ?= .venv
PY := $(VENV)/bin/python
export NO_ALBUMENTATIONS_UPDATE := 1

.PHONY: setup train test lint bench-data bench-models

setup: $(VENV)/.installed

# torch/torchvision are pinned in their own step: pip finds these exact builds on this
# machine's disk, while a bare "torch" could pull a multi-GB download of a newer release.
$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.14.1 torchvision==0.29.1
	$(PY) -m pip install -q -e '.[dev]'
	touch $@

train: setup
	$(VENV)/bin/bus-mtl main

test: setup
	$(VENV)/bin/python -m pytest -q

lint: setup
	$(VENV)/bin/ruff check .
