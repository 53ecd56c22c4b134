# Two commands for a fresh machine:  `make demo`  (set up, then train on the built-in demo mixture)
#                                    `make test`  (set up, then run the test suite)
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: setup demo test lint format bench peers clean

setup: $(STAMP)

# Let pip resolve a torch/torchvision pair from the registry (a lone CPU torch wheel on some machines
# breaks torchvision); the import check proves the pair loads.
$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	$(PY) -c "import torch, torchvision, nvidia.dali, webdataset; print('torch', torch.__version__, 'torchvision', torchvision.__version__, 'dali', nvidia.dali.__version__)"
	touch $(STAMP)

demo: setup
	$(PY) train.py --demo

test: setup
	$(PY) -m pytest tests

# ruff (settings in pyproject.toml): lint and the formatting check, as CI runs them; `make format` rewrites
lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: setup
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

# The peer loaders of `python -m bench loader` (MosaicML Streaming, LitData, SPDL) with the project, in a venv
# of their own: `.venv-peers/bin/python -m bench loader --backends dali-cpu,reference,mosaic,litdata,spdl`
PEERS_VENV ?= .venv-peers
PEERS_PY := $(PEERS_VENV)/bin/python

peers: $(PEERS_VENV)/.installed

$(PEERS_VENV)/.installed: pyproject.toml
	test -x $(PEERS_PY) || python3 -m venv $(PEERS_VENV)
	$(PEERS_PY) -m pip install -q --upgrade pip
	$(PEERS_PY) -m pip install -q -e '.[peers]'
	$(PEERS_PY) -m bench.peers
	touch $@

clean:
	rm -rf runs
