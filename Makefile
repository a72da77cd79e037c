# One command to set everything up and run the main job (`make demo`), one to run the tests (`make test`).
VENV ?= .venv
PY := $(VENV)/bin/python
# torch/torchvision pinned to the builds available offline on the reference machine; override for others,
# e.g. make TORCH_SPEC="torch torchvision"
TORCH_SPEC ?= torch==2.14.1 torchvision==0.29.1
PYTEST_ARGS ?=

.PHONY: venv data test demo bench clean

venv: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(TORCH_SPEC)
	$(PY) -m pip install -q -e ".[dev]"
	touch $@

data:
	bash scripts/install-data.sh

test: venv data
	$(VENV)/bin/python -m pytest $(PYTEST_ARGS)

demo: venv data
	$(VENV)/bin/removalnet demo --threads 1

clean:
	rm -rf $(VENV) runs .pytest_cache

bench: venv data
	REMOVALNET_THREADS=1 $(VENV)/bin/python benchmarks/table1.py
