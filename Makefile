# One command to set everything up and run the main job (`make demo`), one to run the tests (`make test`).
VENV ?= .venv
PY := $(VENV)/bin/python
# torch/torchvision pinned to the builds available offline on the reference machine; override for others,
# e.g. make TORCH_SPEC="torch torchvision"
TORCH_SPEC ?= torch==2.14.1 torchvision==0.29.1
PYTEST_ARGS ?=

.PHONY: venv data test test-paper test-paper-ci test-kernels demo docs bench findings clean

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

# Every grid of configs/paper/ and study of configs/paper/studies/ end to end at the smoke scale (--smoke) on
# tiny files in each dataset's real layout (tests/test_paper_smoke.py; not part of `make test`).
test-paper: venv
	REMOVALNET_THREADS=1 $(VENV)/bin/python -m pytest -m paper -q --durations=0 $(PYTEST_ARGS)

# What CI runs of test-paper: everything but the ImageNet/ViT-B/32 grid (about 10 GB of memory and 9 minutes
# on a CPU at 224 px) and the GPU benchmark's Fashion-MNIST smoke run (the CIFAR one covers its code path; the
# dataset option it adds has fast tests in test_data.py and test_benchmarks_gpu.py), which run with make test-paper.
PAPER_CI ?= not (grid_smoke and imagenet) and not fashion_mnist_smoke
test-paper-ci: venv data
	REMOVALNET_THREADS=1 $(VENV)/bin/python -m pytest -m paper -q --durations=0 -k "$(PAPER_CI)" $(PYTEST_ARGS)

# The verifier and attack tests again under the CPU kernels other machines use (AVX2 and the portable default):
# a number that depends on one CPU's rounding fails here, not on a user's machine.
NUMERIC_TESTS ?= tests/test_deepjudge.py tests/test_zest.py tests/test_modeldiff.py tests/test_sac.py \
	tests/test_ipguard.py tests/test_thresholds.py tests/test_verify_base.py tests/test_permutation_invariance.py \
	tests/test_removalnet.py tests/test_baselines.py tests/test_attack_base.py tests/test_removal_components.py \
	tests/test_rescale.py tests/test_deepjudge_scaled.py tests/test_adaptive_losses.py tests/test_report.py \
	tests/test_confidence.py tests/test_deepjudge_shared.py tests/test_accuracy_check.py
test-kernels: venv data
	for cap in avx2 default; do \
		echo "== ATEN_CPU_CAPABILITY=$$cap"; \
		ATEN_CPU_CAPABILITY=$$cap $(VENV)/bin/python -m pytest -q $(NUMERIC_TESTS) || exit 1; \
	done

demo: venv data
	$(VENV)/bin/removalnet demo --threads 1

# The documentation site (mkdocs.yml, docs/) built strictly (a broken link or reference fails) into site/:
# open site/index.html, or serve it with `.venv/bin/mkdocs serve`. The docs extra is part of dev.
docs: venv
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict --quiet

clean:
	rm -rf $(VENV) runs site .pytest_cache

bench: venv data
	REMOVALNET_THREADS=1 $(VENV)/bin/python benchmarks/table1.py

# The tables and number-bearing lines of docs/findings.md, regenerated from benchmarks/results/ (between the
# `<!-- generated: ... -->` markers; the prose is left alone). tests/test_findings.py fails on a stale one.
findings:
	python3 benchmarks/findings.py
