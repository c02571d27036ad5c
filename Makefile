# The two commands a newcomer needs are `make demo` and `make test`; see README.md.
SHELL := /bin/bash
PYTHON_SYSTEM ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
export GRADIO_ANALYTICS_ENABLED := False
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1

.PHONY: demo test lint data train gallery eval bench bench-quick venv deps dev-deps system-deps-tts system-deps-browser clean-venv

$(VENV)/bin/python:
	@$(PYTHON_SYSTEM) -c 'import sys; assert sys.version_info[:2] == (3, 11), f"MMBM needs Python 3.11, found {sys.version.split()[0]}"' \
		|| { echo "make: install Python 3.11 (set PYTHON_SYSTEM=/path/to/python3.11)"; exit 1; }
	$(PYTHON_SYSTEM) -m venv $(VENV)
	$(PIP) install -q --upgrade pip

# Stamp files re-run pip only when a requirements file changes.
$(VENV)/.runtime: requirements.txt | $(VENV)/bin/python
	$(PIP) install -q -r requirements.txt
	@touch $@

$(VENV)/.dev: requirements-dev.txt $(VENV)/.runtime
	$(PIP) install -q -r requirements-dev.txt
	@touch $@

venv: $(VENV)/bin/python
deps: $(VENV)/.runtime
dev-deps: $(VENV)/.dev

system-deps-tts:
	@scripts/system-deps.sh tts

system-deps-browser:
	@scripts/system-deps.sh browser

demo: deps
	@if [ ! -f app.py ]; then \
		echo "make demo: the demo app (app.py) is not there yet; it lands with the demo issue. Nothing to start."; \
		exit 1; \
	fi
	$(PY) app.py --host 127.0.0.1 --port 7860

test: dev-deps system-deps-tts system-deps-browser
	$(PY) -m pytest

# The default ShapesWorld corpus for the tiny model: 23k scenes (~1 min), then
# ~4,900 spoken clips from five offline TTS engines (~25 min on 2 cores).
data: dev-deps system-deps-tts
	$(PY) -m mmbm.shapesworld shapes --out data/shapes
	$(PY) -m mmbm.shapesworld speech --captions data/shapes --out data/speech

# The shipped models/mmbm-tiny: the exact command its model card quotes.
TRAIN_FLAGS := --preset tiny --images data/shapes --speech data/speech --out models/mmbm-tiny \
	--checkpoint-dir runs/mmbm-tiny/checkpoints --max-steps 2400 --max-minutes 45 --seed 0 --speech-batch-size 32 \
	--mixing sum --eval-every 200 --checkpoint-every 100 --precision fp32 --caption-weight 3
train: data
	$(PY) -m mmbm.training $(TRAIN_FLAGS)

# The demo's default index over held-out scenes (val, test, compositional) and its example scenes,
# shipped beside the checkpoint in models/mmbm-tiny/gallery and models/mmbm-tiny/examples.
gallery: data
	$(PY) -m mmbm.demo.gallery --model models/mmbm-tiny --images data/shapes --out models/mmbm-tiny/gallery --overwrite

# Real recordings to score on, when present (never committed; see docs/training.md).
REAL_SPEECH ?= $(wildcard ../shared/data/fsdd-dev/manifest.jsonl)
EVAL_FLAGS := --images data/shapes --speech data/speech $(if $(REAL_SPEECH),--real-speech $(REAL_SPEECH))
eval: data
	$(PY) -m mmbm.evaluate models/mmbm-tiny $(EVAL_FLAGS) --out runs/eval
	@echo "metrics written to runs/eval; the shipped ones are models/mmbm-tiny/metrics.json"

# Side by side with pocketsphinx, the seed's LSTM captioner, single-task models and the
# fusion ablation; the full run (~1.5 h on 2 idle cores) writes docs/benchmarks.md.
bench: dev-deps data
	$(PY) -m bench.run_all --model models/mmbm-tiny $(if $(REAL_SPEECH),--real-speech $(REAL_SPEECH))

bench-quick: dev-deps data
	$(PY) -m bench.run_all --quick --model models/mmbm-tiny $(if $(REAL_SPEECH),--real-speech $(REAL_SPEECH))

# Style, then the layering contracts in pyproject.toml (docs/architecture.md).
lint: dev-deps
	$(PY) -m ruff check app.py mmbm tests bench
	$(VENV)/bin/lint-imports --no-cache

clean-venv:
	rm -rf $(VENV)
