# vitstudy: `make demo` and `make test` do all the set-up on a fresh machine.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
# torch is pinned to the release this project is tested with; pip takes it from a local cache where one exists.
TORCH  ?= torch==2.14.1 torchvision==0.29.1

.PHONY: demo test test-all bench bench-paper clean-outputs fig-raghu-1 fig-raghu-2

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check $(TORCH)
	$(PY) -m pip install -q --disable-pip-version-check -e '.[test,cluster]'
	touch $(STAMP)

## demo: CKA across a ViT-Ti/16 and a ResNet-18 (random init, offline) on 256 synthetic images
demo: $(STAMP)
	$(VENV)/bin/vitstudy run analysis=cka_across model=vit_tiny reference=resnet18 \
	  model.pretrained=false reference.pretrained=false dataset=synthetic dataset.num_images=256 \
	  hydra.run.dir=outputs/demo
	@echo "demo outputs: $$(ls outputs/demo/*.csv outputs/demo/*.png outputs/demo/run.json | tr '\n' ' ')"

## test: the fast offline test suite (random-init models, generated images)
test: $(STAMP)
	$(PY) -m pytest -m "not slow"

## test-all: also the slower end-to-end checks (and real-data checks when CIFAR-10 is extracted)
test-all: $(STAMP)
	$(PY) -m pytest

## bench: speed, memory and accuracy of cka_across against the bare forward passes and the peer tools
bench: $(STAMP)
	$(PY) -m pip install -q --disable-pip-version-check --no-deps torch-cka==0.21 pytorch-cka==1.1.3
	$(PY) scripts/bench_cka.py

bench-paper: $(STAMP)
	$(PY) scripts/bench_cka.py --paper-scale

## paper figures: need pretrained weights (online or cached) and ImageNet val images (IMAGENET_VAL=DIR)
IMAGENET_VAL ?= $(HOME)/data/imagenet/val
FIG_ARGS ?=
fig-raghu-1: $(STAMP)
	$(VENV)/bin/vitstudy run experiment=raghu_fig1 dataset.root=$(IMAGENET_VAL) hydra.run.dir=outputs/figures/raghu_fig1 $(FIG_ARGS)
fig-raghu-2: $(STAMP)
	$(VENV)/bin/vitstudy run experiment=raghu_fig2 dataset.root=$(IMAGENET_VAL) hydra.run.dir=outputs/figures/raghu_fig2 $(FIG_ARGS)

clean-outputs:
	rm -rf outputs/* multirun
	touch outputs/.gitkeep
