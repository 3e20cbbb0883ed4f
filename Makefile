VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: venv venv-litert train lint test test-all bench sample-data finetune-demo clean

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e ".[dev]"
	touch $(STAMP)

venv: $(STAMP)

# LiteRT (edgetam-export --format tflite, docs/ondevice.md) in its own venv: litert-torch's pins downgrade
# typing-extensions, wandb and pydantic, which breaks the training venv. Use .venv-litert/bin/edgetam-export there.
LITERT_VENV ?= .venv-litert
venv-litert: $(LITERT_VENV)/.installed
$(LITERT_VENV)/.installed: pyproject.toml
	test -x $(LITERT_VENV)/bin/python || python3 -m venv $(LITERT_VENV)
	$(LITERT_VENV)/bin/python -m pip install -q --upgrade pip
	$(LITERT_VENV)/bin/python -m pip install -q -e ".[litert]"
	touch $@
	@echo "LiteRT venv ready: $(LITERT_VENV)/bin/edgetam-export CKPT --format tflite --out edgetam-tflite/"

sample-data: $(STAMP)
	$(PY) scripts/make_sample_data.py --out data/sample

# the tools live in $(VENV): say how to reach them (a plain `python train.py` has no hydra, edgetam-* are not on PATH)
VENV_HINT := @echo; echo "Next: source $(VENV)/bin/activate   (then python train.py ..., edgetam-predict, \
edgetam-export; or call $(VENV)/bin/python and $(VENV)/bin/edgetam-predict directly)"

train: sample-data
	$(PY) train.py experiment=edgetam_distill debug=quickstart
	$(VENV_HINT)

# docs/finetune.md on generated data, CPU, 20 steps (about the quick start's s/step): COCO json -> fine-tune (frozen trunk) -> export -> predict.
# The starting edgetam.pt is randomly initialised (no downloads), so the numbers show the plumbing, not a model.
FT_RUN := logs/train/runs/finetune_demo
finetune-demo: $(STAMP)
	$(PY) scripts/make_sample_data.py --out data/sample --formats coco --num-images 8 --num-val-images 2
	$(PY) scripts/make_random_checkpoint.py --out data/sample/edgetam_random.pt
	$(PY) train.py experiment=edgetam_finetune debug=quickstart data=coco \
	  data.train.annotations=data/sample/coco/instances_train.json data.train.images=data/sample/coco/train \
	  data.val.annotations=data/sample/coco/instances_val.json data.val.images=data/sample/coco/val \
	  model.init_from=data/sample/edgetam_random.pt "model.freeze=[image_encoder.trunk]" \
	  trainer.max_steps=20 logger=csv run_name=finetune_demo
	$(VENV)/bin/edgetam-export $(FT_RUN)/checkpoints/last.ckpt --format official --image-size 256 \
	  --out $(FT_RUN)/edgetam_finetuned.pt
	$(VENV)/bin/edgetam-predict image --ckpt $(FT_RUN)/edgetam_finetuned.pt --image-size 256 \
	  --image data/sample/coco/val/000008.jpg --points "160,120" --labels 1 --out $(FT_RUN)/prediction
	$(VENV_HINT)

# lint (ruff: pycodestyle, pyflakes, import order, absolute imports; pyproject.toml) before the tests
lint: $(STAMP)
	$(VENV)/bin/ruff check .

test: lint
	$(PY) -m pytest -q -m "not slow"

test-all: lint
	$(PY) -m pytest -q

# every benchmark under scripts/bench/ -> docs/benchmarks.md (BENCH_ARGS="--quick" or "--only teacher_cache ...")
bench: $(STAMP)
	PYTHONPATH=. $(PY) scripts/bench/run_all.py $(BENCH_ARGS)

clean:
	rm -rf outputs logs data/sample
