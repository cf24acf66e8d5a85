# Two entry points: `make demo` (train and evaluate on the embedded task) and `make test`.
# Each creates the virtual environment on first use; torch is installed only where none is importable.
VENV ?= .venv
PY := $(VENV)/bin/python
export HF_HUB_OFFLINE := 1
export HF_DATASETS_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false
# The project's folder first; a PYTHONPATH already set (packages installed with pip --target) is kept after it.
export PYTHONPATH := $(CURDIR)$(if $(PYTHONPATH),:$(PYTHONPATH))

.PHONY: demo test test-fast test-oldest test-lowest lint setup multi30k multi30k-cpu gpu-check gpu-profile docs-figures docs-trained

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || python3 -m venv --system-site-packages $(VENV)
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install -q torch==2.13.0
	$(PY) -c "import re, tomllib; p = tomllib.load(open('pyproject.toml', 'rb'))['project']; \
		extras = p['optional-dependencies']; \
		pinned = (lambda r: re.sub(r'>=([^,]+).*', r'==\1', r)) if '$(LOWEST)' else (lambda r: r); \
		print('\n'.join([pinned(r) for r in p['dependencies'] + extras['fast']] + extras['dev']))" > $(VENV)/requirements.txt
	$(PY) -m pip install -q -r $(VENV)/requirements.txt $(if $(TRANSFORMERS),"transformers==$(TRANSFORMERS)")
	$(PY) -m pip install -q --no-deps -e .  # the modules and the vanilla-train / vanilla-eval console scripts
	touch $@

# Train on the embedded English -> German number-words task (recipes/demo.yaml), then evaluate demo-output.
demo: setup
	$(PY) train.py recipes/demo.yaml
	$(PY) eval.py --model demo-output

# Two pytest-xdist workers: most tests wait on a train.py/eval.py subprocess, which keeps one core busy.
test: setup
	$(PY) -m pytest -q -n 2

# The quick tier (under a minute): everything but the tests marked slow or multiprocess (pyproject.toml).
test-fast: setup
	$(PY) -m pytest -q -n 2 -m "not slow and not multiprocess"

# The suite on the oldest transformers that pyproject.toml allows, in its own venv (CI runs both ends).
OLDEST_TRANSFORMERS := $(shell sed -n 's/.*"transformers>=\([0-9.]*\),.*/\1/p' pyproject.toml)
test-oldest:
	$(MAKE) test VENV=.venv-oldest TRANSFORMERS="$(OLDEST_TRANSFORMERS).*"

# The suite on the lowest release of every dependency pyproject.toml names (torch's floor comes from PyPI as a CUDA
# build of several GB, so CI does not run it), in its own venv: the floors are tested, not guessed.
test-lowest:
	$(MAKE) test VENV=.venv-lowest LOWEST=1

lint: setup
	$(VENV)/bin/ruff check . && $(VENV)/bin/ruff format --check .

# Multi30k (../shared/data/multi30k): train, then average the last checkpoints and score test_2016_flickr.
# PAIR=de_en (default) or en_de, MULTI30K=<folder of the corpus>; multi30k-cpu is the 22-minute CPU recipe,
# multi30k the GPU one (4x the batch). Their decoding was chosen on the validation set (BENCHMARKS.md): the average
# of the last 3 epochs' checkpoints, length penalty 1.0.
PAIR ?= de_en
MULTI30K := ../shared/data/multi30k
MULTI30K_LANGS = --source_lang $(firstword $(subst _, ,$(PAIR))) --target_lang $(lastword $(subst _, ,$(PAIR)))
MULTI30K_EVAL = --test_file $(MULTI30K)/test_2016_flickr.jsonl $(MULTI30K_LANGS)
MULTI30K_DATA = --train_file $(MULTI30K)/train.jsonl --validation_file $(MULTI30K)/validation.jsonl $(MULTI30K_EVAL)

# One recipe per machine for both directions: PAIR sets the languages and the output folder.
multi30k: setup
	$(PY) train.py recipes/multi30k_de_en.yaml $(MULTI30K_DATA) --output_dir runs/multi30k_$(PAIR)
	$(PY) eval.py --model runs/multi30k_$(PAIR) --average_last 3 --length_penalty 1.0 $(MULTI30K_EVAL)

multi30k-cpu: setup
	$(PY) train.py recipes/multi30k_de_en_cpu.yaml $(MULTI30K_DATA) --output_dir runs/multi30k_$(PAIR)_cpu
	$(PY) eval.py --model runs/multi30k_$(PAIR)_cpu --average_last 3 --length_penalty 1.0 $(MULTI30K_EVAL)

# The GPU check (bench/gpu_check.py): bench_speed.py at the base shape, the GPU recipe stopped at 4 minutes of
# training (the model at 90 s kept) and both scored on test_2016_flickr, one summary table, also in $(OUT)/summary.json.
# At most 8 minutes on one H100. It runs on the python it finds (no venv, no install): PYTHON=... picks another.
# GPU_CHECK_DRY=1 runs the same steps shrunk on a CPU (tiny shapes, 300 lines, seconds of training).
PYTHON ?= python3
OUT ?= gpu-check-results
gpu-check:
	$(PYTHON) bench/gpu_check.py $(OUT) --data $(MULTI30K)

# After the GPU check, where the time goes on the GPU (bench/profile_speed.py): the cost of a new batch shape (with and
# without cuDNN's attention), a base-shape training step and beam-4 decoding, eager and compiled, each with its wall
# time, GPU-busy time and kernels, and the operator tables (~2 minutes).
gpu-profile:
	$(PYTHON) bench/profile_speed.py --device cuda --rows 30

# The post's figures: positions and schedule always, the demo heatmap from demo-output (make demo), the Multi30k
# learning curve and heatmap when runs/multi30k_de_en_cpu exists (make multi30k-cpu).
DOCS_SENTENCE := Ein Mann mit einem orangefarbenen Hut, der etwas anstarrt.
docs-figures: setup
	$(PY) docs/make_figures.py --model demo-output
	test ! -d runs/multi30k_de_en_cpu || $(PY) docs/make_figures.py --run runs/multi30k_de_en_cpu \
		--model runs/multi30k_de_en_cpu --sentence "$(DOCS_SENTENCE)" --figure docs/figures/multi30k_attention.png

# The post's blocks with the demo model (make demo) in place of the stand-in the test suite trains.
docs-trained: setup
	VANILLA_DOCS_MODEL=demo-output $(PY) -m pytest -q docs/transformer-networks.md
