# FAME Node: the two commands of the quick start.
#   make demo   set up .venv (runtime + demo data) and run the node's main job on its defaults
#   make test   set up .venv (everything, incl. torch 2.13.0 CPU) and run lint, types, tests
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip

.PHONY: demo test lint typecheck pytest federation federation-experiments train train-paper bench reliability reliability-long clean-venv

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip

$(VENV)/.runtime: pyproject.toml | $(VENV)/bin/python
	$(PIP) install --quiet -e '.[demo]'
	touch $@

$(VENV)/.dev: pyproject.toml $(VENV)/.runtime
	# torch first, pinned, so nothing pulls a CUDA build.
	$(PIP) install --quiet torch==2.13.0
	$(PIP) install --quiet -e '.[demo,train,federation,dev,gui]'
	touch $@

demo: $(VENV)/.runtime
	$(VENV)/bin/fame-node demo

lint: $(VENV)/.dev
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

typecheck: $(VENV)/.dev
	$(VENV)/bin/mypy

pytest: $(VENV)/.dev
	$(VENV)/bin/pytest -q

test: lint typecheck pytest

# A real federation on 127.0.0.1 (SuperLink with TLS and node authentication, SuperNodes,
# fame-node run): the deployment test and the fault tests (tests/federation, minutes).
federation: $(VENV)/.dev
	$(VENV)/bin/pytest -q -m federation tests/federation

# The federation experiments of docs/FEDERATION.md: local-only vs federated vs centralised,
# DP-SGD at epsilon 8 and 1, SecAgg+, client-level DP, on BUSI and two BUS-BRA sites at a
# reduced scale (33 min measured on 2 shared CPU cores; resumable: finished configurations in
# docs/federation/*.json are skipped), then renders docs/FEDERATION.md.
federation-experiments: $(VENV)/.dev
	OMP_NUM_THREADS=1 OMP_WAIT_POLICY=PASSIVE nice -n 10 $(PY) -m trainer.federated.experiments

# Retrain the default bundle (seed 2028 of the recipe: with its probe the best of three seeds
# on val that passes the shipped-model tests; seed 2027's, 0.2.7, lets 3 of 24 phantoms pass
# the OOD flag) on BUSI + the BUS-BRA train splits (three scanners), with the scanner-shift
# augmentation (about 70 min on one quiet CPU core; resumable: run it again after an
# interruption), fit its layer probe (a few minutes: class logits from every layer's
# features and the MAU-Net's levels averaged inside the lesion map, trainer.probe), then
# measure it on every site's test split.
train: $(VENV)/.dev
	$(PY) -m trainer.train --manifest ../shared/data/busi/manifest.csv \
		--manifest ../shared/data/busbra/manifest.csv --augment site-shift \
		--epochs-seg 14 --epochs-cls 20 --max-minutes 400 --seg-share 0.8 --threads 1 \
		--seed 2028 --name fame-node-multisite --version 0.2.2 \
		--work-dir .cache/train-multisite --out .cache/bundles/fame-node-multisite-0.2.2
	$(PY) -m trainer.probe --bundle .cache/bundles/fame-node-multisite-0.2.2 \
		--manifest ../shared/data/busi/manifest.csv \
		--manifest ../shared/data/busbra/manifest.csv --version 0.2.8 --out models/default
	$(PY) -m trainer.site_report --bundle models/default --out docs/results/fame-node-multisite-0.2.8.json
	$(PY) -m trainer.figures --report docs/results/fame-node-multisite-0.2.8.json
	$(PY) -m trainer.results_doc --intro docs/results/intro.md

# The `paper` profile (never committed: about 0.5 GB): the three-fold MAU-Net ensemble and
# the dual-stage classifier at the published widths (ResNet50V2, NASNet-A Large), FAME's
# schedule (Adam 1e-4, L2 1e-5, ReduceLROnPlateau, early stopping), on a GPU where torch sees
# one (--device auto; on the 2-core CPU it would take days). Resumable; then measured.
PAPER_BUNDLE := .cache/bundles/paper-0.1.0
train-paper: $(VENV)/.dev
	$(PY) -m trainer.train --manifest ../shared/data/busi/manifest.csv \
		--manifest ../shared/data/busbra/manifest.csv --augment site-shift --folds 3 \
		--classifier dual-stage --profile paper --schedule paper --device auto \
		--epochs-seg 100 --epochs-cls 100 --epochs-meta 30 --max-minutes 1440 --seg-share 0.6 \
		--seed 2026 --name fame-node-multisite-paper --version 0.1.0 \
		--work-dir .cache/train-paper --out $(PAPER_BUNDLE)
	$(PY) -m trainer.site_report --bundle $(PAPER_BUNDLE) \
		--out docs/results/fame-node-multisite-paper-0.1.0.json
	$(PY) -m trainer.figures --report docs/results/fame-node-multisite-paper-0.1.0.json
	$(PY) -m trainer.results_doc --intro docs/results/intro.md

# Benchmarks (not part of `make test`): writes docs/PERFORMANCE.md; see bench/README.md.
bench: $(VENV)/.dev
	$(PY) -m bench
	$(MAKE) reliability-long

# Reliability figures: docs/reliability/*.json, then docs/RELIABILITY.md; see tests/reliability.
# The CI-sized run (a few minutes on 2 cores), then the long ones (about 75 minutes).
RELIABILITY := FAME_RELIABILITY_OUT=docs/reliability $(VENV)/bin/pytest -q -p no:cacheprovider
reliability: $(VENV)/.dev
	$(RELIABILITY) -m "reliability and not slow" tests/reliability
	$(PY) -m bench.reliability

reliability-long: $(VENV)/.dev
	$(RELIABILITY) -m "reliability and slow" tests/reliability
	$(PY) -m bench.reliability

clean-venv:
	rm -rf $(VENV)
