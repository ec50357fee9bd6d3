# last_lite: set-up, tests, demo, export and the pipeline. Everything runs inside .venv.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
TORCH_VERSION ?= 2.13.0
DEMO_DIR ?= outputs/demo
DEMO_VENV ?= .venv-demo
CKPT    ?=
BACKEND ?= onnx_int8
# The data: an experiment's own (EXPERIMENT=nw_ucla_full is NW-UCLA), else DATA's, else the
# synthetic set. DATA is passed only when given: a data= on the command line beats a preset's.
DATA    ?=
# the pipeline's recipe: conf/experiment/<name>, by default the one named like DATA (if any)
EXPERIMENT ?= $(if $(DATA),$(if $(wildcard conf/experiment/$(DATA).yaml),$(DATA)))
RUN     ?= outputs/pipeline/$(or $(EXPERIMENT),$(DATA),synthetic)

.PHONY: install demo-env lint test demo export pipeline pipeline-status gains clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	# Pin the CPU build first: an unpinned torch would pull a multi-GB CUDA build.
	$(PY) -m pip install --quiet torch==$(TORCH_VERSION)
	# The export extras (tflite, coreml) with torch passed again, so the resolver keeps the pin.
	$(PY) -m pip install --quiet -e '.[dev,tflite,coreml]' torch==$(TORCH_VERSION)
	touch $@

install: $(VENV)/.installed

# The edge demo's runtime environment (last_lite without its dependencies + the [demo] extra:
# numpy, onnxruntime, mediapipe 0.10.21, scikit-image; no torch). mediapipe 0.10.21 needs
# protobuf < 5, which the training stack's onnx refuses, so it is a venv of its own.
$(DEMO_VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(DEMO_VENV)
	$(DEMO_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(DEMO_VENV)/bin/python -m pip install --quiet --no-deps -e .
	$(DEMO_VENV)/bin/python -m pip install --quiet $$($(DEMO_VENV)/bin/python -c "import tomllib; print(' '.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['optional-dependencies']['demo']))")
	touch $@

demo-env: $(DEMO_VENV)/.installed

# ruff's lint (pyproject.toml [tool.ruff]) is part of the test command, so CI (.ci/run) runs it.
lint: install
	$(VENV)/bin/ruff check .

# tests/test_demo.py runs the edge demo with $(DEMO_VENV)'s interpreter.
test: install demo-env lint
	$(PY) -m pytest -q

# A short Path A run on the embedded synthetic set, then the evaluation of the checkpoint the
# selection rule handed on (metrics.json's "checkpoint"); a few minutes on 2 cores.
demo: install
	$(PY) -m last_lite.train model=last_lite_small trainer.max_epochs=6 sched.warmup_epochs=1 hydra.run.dir=$(DEMO_DIR)/train
	$(PY) -m last_lite.evaluate ckpt=$$($(PY) -c "import json; print(json.load(open('$(DEMO_DIR)/train/metrics.json'))['checkpoint'])") hydra.run.dir=$(DEMO_DIR)/evaluate
	@echo "Plots: $(DEMO_DIR)/train/confusion_matrix.png, $(DEMO_DIR)/evaluate/confusion_matrix.png; curves: $(DEMO_DIR)/train/csv/metrics.csv"

# make export CKPT=outputs/.../checkpoints/best.ckpt BACKEND=onnx|onnx_int8|tensorrt|tflite|coreml|ort
export: install
	@test -n "$(CKPT)" || { echo "usage: make export CKPT=<checkpoint> [BACKEND=onnx|onnx_int8|tensorrt|tflite|coreml|ort]"; exit 2; }
	$(PY) -m last_lite.export ckpt=$(CKPT) backend=$(BACKEND)

# The decision tree (Path A -> B -> C -> INT8 export), resumable: rerun to continue.
#   make pipeline DATA=nw_ucla [EXPERIMENT=nw_ucla_full] [RUN=outputs/pipeline/<experiment>]
#                 [ARGS='tree.jobs=2 tree.force=[teacher]']
pipeline: install
	$(PY) -m last_lite.pipeline $(if $(DATA),data=$(DATA)) $(if $(EXPERIMENT),experiment=$(EXPERIMENT)) hydra.run.dir=$(RUN) $(ARGS)

# The expected-gain tables (each network's paths A, B, C, FT over seeds), resumable: rerun to continue.
#   make gains DATA=nw_ucla EXPERIMENT=nw_ucla_full [GAINS_RUN=outputs/gains/<experiment>] [ARGS='jobs=2 teacher.ckpt=...']
GAINS_RUN ?= outputs/gains/$(or $(EXPERIMENT),$(DATA),synthetic)
gains: install
	$(PY) -m last_lite.pipeline.gains $(if $(DATA),data=$(DATA)) $(if $(EXPERIMENT),experiment=$(EXPERIMENT)) hydra.run.dir=$(GAINS_RUN) $(ARGS)

# Where that run stands, stage by stage (also while it runs): make pipeline-status [RUN=...]
pipeline-status: install
	$(PY) -m last_lite.pipeline.status $(RUN)

clean:
	rm -rf $(VENV) $(DEMO_VENV) outputs .pytest_cache
