# vitstudy: `make demo` and `make test` do all the set-up on a fresh machine.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
# torch is pinned to the release this project is tested with; pip takes it from a local cache where one exists.
TORCH  ?= torch==2.14.1 torchvision==0.29.1

.PHONY: demo tour test test-all bench bench-paper bench-grid bench-forward clean-outputs train-quick train-cifar train-alternet train-demo

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check $(TORCH)
	$(PY) -m pip install -q --disable-pip-version-check -e '.[test,cluster]'
	touch $(STAMP)

## demo: CKA within and across the bundled trained CIFAR-10 ViT and ResNet on the bundled 1,000 CIFAR-10 test
## images (offline); prints three findings computed from its CSVs; outputs under outputs/demo/
demo: $(STAMP)
	$(VENV)/bin/vitstudy demo --out outputs/demo

## tour: the demo plus attention distance, position embeddings, skip ratios, spatial localization, Fourier,
## feature variance and linear probes on the same models, collected into outputs/tour/report/index.html
tour: $(STAMP)
	$(VENV)/bin/vitstudy tour --out outputs/tour

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

bench-grid: $(STAMP)
	$(PY) scripts/bench_cka.py --grid

bench-measures: $(STAMP)
	$(PY) scripts/bench_measures.py

## paper figures: need pretrained weights (online or cached) and ImageNet images (IMAGENET_VAL=DIR).
## Every target runs as a Hydra multirun into $(FIG_OUT)/<target>/ (default outputs/figures); LAUNCHER=slurm
## (or joblib, local) sends the same jobs through that launcher. `make report` collects everything into one HTML
## page. FIG_ARGS adds Hydra overrides to every target. `make figures-dryrun` runs them all on stand-ins first.
VITSTUDY     := $(VENV)/bin/vitstudy
IMAGENET_VAL ?= $(HOME)/data/imagenet/val
IMAGENET_TRAIN ?= $(HOME)/data/imagenet/train
CIFAR_ROOT   ?= $(HOME)/data/cifar
LAUNCHER     ?=
FIG_ARGS     ?=
FIG_OUT      ?= outputs/figures
RUN_FIG = $(VITSTUDY) run -m $(if $(LAUNCHER),hydra/launcher=$(LAUNCHER)) hydra.sweep.dir=$(FIG_OUT)/$@ $(FIG_ARGS)
VAL     = dataset.root=$(IMAGENET_VAL)

FIGURES = fig-raghu-1 fig-raghu-2 fig-raghu-3 fig-raghu-4 fig-raghu-5 fig-raghu-6 fig-raghu-7 fig-raghu-8 \
          fig-raghu-9 fig-raghu-10 fig-raghu-11 fig-raghu-12 fig-raghu-13 fig-vit-6 fig-vit-7 \
          fig-parkkim-2a fig-parkkim-2b fig-parkkim-8 fig-darcet-7 fig-sun-10 fig-sun-11
.PHONY: figures report $(FIGURES)

figures: $(FIGURES)
report:
	$(VITSTUDY) collect $(FIG_OUT) --out $(FIG_OUT)/summary

fig-raghu-1: $(STAMP)
	$(RUN_FIG) experiment=raghu_fig1 $(VAL)
fig-raghu-2: $(STAMP)
	$(RUN_FIG) experiment=raghu_fig2 model=vit_l16,vit_b32 $(VAL)
fig-raghu-3: $(STAMP)
	$(RUN_FIG) experiment=raghu_fig3 $(VAL)
fig-raghu-4: $(STAMP)
	$(RUN_FIG) experiment=raghu_fig4 $(VAL)
fig-raghu-5: $(STAMP)
	$(RUN_FIG) experiment=raghu_fig5 $(VAL)
fig-raghu-6: $(STAMP)
	$(RUN_FIG) experiment=raghu_fig6 model=vit_b32,resnet50 $(VAL)
fig-raghu-7: $(STAMP)
	$(RUN_FIG) experiment=raghu_fig7 $(VAL)
fig-raghu-8: $(STAMP)
	$(RUN_FIG) experiment=raghu_fig8 'analysis.blocks=[1],[7],[10]' $(VAL)
fig-raghu-9: $(STAMP)
	$(RUN_FIG) experiment=raghu_fig9 model=vit_b32,vit_l16,bit_r50x1 $(VAL)
fig-raghu-10: $(STAMP)
	$(RUN_FIG) experiment=raghu_fig10 $(VAL)
fig-raghu-11: $(STAMP)
	$(RUN_FIG) experiment=raghu_fig11 model=vit_b32,vit_m16_gap,resnet50 dataset.root=$(IMAGENET_TRAIN)
fig-raghu-12: $(STAMP)
	$(RUN_FIG) experiment=raghu_fig12 $(VAL)
fig-raghu-13: $(STAMP)
	$(RUN_FIG) experiment=raghu_fig13 model=vit_b32,vit_b16,vit_l16,resnet50,bit_r50x1 dataset.root=$(CIFAR_ROOT)
fig-vit-6: $(STAMP)
	$(RUN_FIG) experiment=vit_fig6 $(VAL)
fig-vit-7: $(STAMP)
	$(RUN_FIG) experiment=vit_fig7 $(VAL)
fig-parkkim-2a: $(STAMP)
	$(RUN_FIG) experiment=parkkim_fig2a $(VAL)
fig-parkkim-2b: $(STAMP)
	$(RUN_FIG) experiment=parkkim_fig2b $(VAL)
fig-parkkim-8: $(STAMP)
	$(RUN_FIG) experiment=parkkim_fig8 $(VAL)

## high-norm tokens and massive activations (Darcet et al. 2024, Sun et al. 2024); tags in conf/experiment/*.yaml
DARCET_MODELS = vit_large_patch14_dinov2.lvd142m,vit_large_patch14_reg4_dinov2.lvd142m,deit3_base_patch16_224.fb_in22k_ft_in1k,vit_base_patch16_clip_224.laion2b
fig-darcet-7: $(STAMP)
	$(RUN_FIG) experiment=darcet_fig7 model.name=$(DARCET_MODELS) $(VAL)
fig-sun-10: $(STAMP)
	$(RUN_FIG) experiment=sun_fig10 $(VAL)
fig-sun-11: $(STAMP)
	$(RUN_FIG) experiment=sun_fig11 $(VAL)

## fig-measures: Raghu et al. Figs 1-2 under every similarity measure (MEASURES) on the bundled trained CIFAR-10 ViT
## and ResNet and the bundled 1,000 images (offline, CPU): similarity_within of both models (fig-measures-1) and
## similarity_across ViT vs ResNet (fig-measures-2), one job per measure, then the side-by-side figure and the
## Fig. 1-2 claims per measure into $(FIG_OUT)/fig-measures (docs/measures_answer.md). FIG_ARGS and LAUNCHER apply.
MEASURES ?= cka,rbf_cka,procrustes,linear_regression,rsa,mutual_knn,cknna,svcca,pwcca
.PHONY: fig-measures fig-measures-1 fig-measures-2
fig-measures: fig-measures-1 fig-measures-2
	$(PY) -m vitstudy.report.measures $(FIG_OUT)/fig-measures-1 $(FIG_OUT)/fig-measures-2 --out $(FIG_OUT)/fig-measures
fig-measures-1: $(STAMP)
	$(RUN_FIG) experiment=measures_fig1 model=vit_cifar10_demo,resnet_cifar10_demo analysis.measure=$(MEASURES)
fig-measures-2: $(STAMP)
	$(RUN_FIG) experiment=measures_fig2 analysis.measure=$(MEASURES)

## Park & Kim's CIFAR-100 figures: need the checkpoints of `make train-cifar` / `make train-alternet`, read from
## $(CIFAR_CKPT)/<model preset>/checkpoints/best.pt (where those targets write them)
CIFAR_FIGURES = fig-parkkim-1a fig-parkkim-1c fig-parkkim-9 fig-parkkim-lesion
CIFAR_CKPT    ?= outputs/train/park_kim
CKPT_MODEL     = 'model.checkpoint=$(CIFAR_CKPT)/$${model.name}/checkpoints/best.pt'
CKPT_REFERENCE = 'reference.checkpoint=$(CIFAR_CKPT)/$${reference.name}/checkpoints/best.pt'
.PHONY: figures-cifar $(CIFAR_FIGURES)
figures-cifar: $(CIFAR_FIGURES)
fig-parkkim-1a: $(STAMP)
	$(RUN_FIG) experiment=parkkim_fig1a model=vit_ti_cifar,resnet50_cifar $(CKPT_MODEL) dataset.root=$(CIFAR100_ROOT)
fig-parkkim-1c: $(STAMP)
	$(RUN_FIG) experiment=parkkim_fig1c model=vit_ti_cifar,resnet50_cifar,alternet50_cifar $(CKPT_MODEL) dataset.root=$(CIFAR100_ROOT)
fig-parkkim-9: $(STAMP)
	$(RUN_FIG) experiment=parkkim_fig9 $(CKPT_MODEL) $(CKPT_REFERENCE) dataset.root=$(CIFAR100_ROOT)
fig-parkkim-lesion: $(STAMP)
	$(RUN_FIG) experiment=parkkim_lesion $(CKPT_MODEL) dataset.root=$(CIFAR100_ROOT)

## figures-dryrun: every figure target end to end on stand-ins, offline, in minutes on a CPU, before the GPU hours:
## RANDOM-init "pretrained" weights in a scratch Hugging Face cache (scripts/standin_weights.py), generated images
## in the ImageNet and CIFAR layouts (scripts/standin_data.py), three tiny CIFAR-100 trainings for the CIFAR targets,
## then each target with tiny image counts into $(DRYRUN_DIR)/figures, `make report`, and a check of every run
## directory and a wall-time table. The numbers are meaningless; it checks configs, weights, loaders and plots.
DRYRUN_DIR  ?= outputs/dryrun
DRYRUN_ARGS ?=
.PHONY: figures-dryrun
figures-dryrun: $(STAMP)
	$(PY) scripts/figures_dryrun.py --out $(DRYRUN_DIR) --make "$(MAKE) -o $(STAMP)" $(DRYRUN_ARGS)

## training: CPU-sized models on CIFAR-10 JPEG folders (about 25 min on 2 cores), and Park & Kim's CIFAR-100
## models with the full recipe (a GPU job: 305 epochs each, an estimated 1-3 GPU-hours per model, not measured)
CIFAR10_DIR   ?= /tmp/cifar10
CIFAR100_ROOT ?= $(HOME)/data
train-quick: $(STAMP)
	PY=$(PY) scripts/train_cifar_real.sh $(CIFAR10_DIR) outputs/train/quick
train-cifar: $(STAMP)
	for m in vit_ti_cifar pit_ti_cifar swin_ti_cifar resnet50_cifar; do \
	  $(VITSTUDY) train model=$$m dataset=cifar100 dataset.root=$(CIFAR100_ROOT) dataset.download=true \
	    recipe=park_kim dataset.num_workers=8 hydra.run.dir=$(CIFAR_CKPT)/$$m || exit 1; done
train-alternet: $(STAMP)
	$(VITSTUDY) train model=alternet50_cifar dataset=cifar100 dataset.root=$(CIFAR100_ROOT) dataset.download=true \
	  recipe=park_kim dataset.num_workers=8 hydra.run.dir=$(CIFAR_CKPT)/alternet50_cifar

## train-demo: retrain the bundled demo models from scratch on all of CIFAR-10 (CIFAR10_DIR: extracted JPEGs with
## train/ and test/ class folders), then package them into vitstudy/zoo/weights (fp16 safetensors + demo.json).
## DEMO_EPOCHS: main epochs after 3 warm-up epochs (the bundled models got 3 (ViT) and 4 (ResNet); see docs/demo.md).
DEMO_EPOCHS ?= 4
DEMO_RUNS   ?= outputs/train-demo
train-demo: $(STAMP)
	for m in vit_mini_cifar resnet_mini_cifar; do \
	  $(VITSTUDY) train model=$$m recipe=demo recipe.epochs=$(DEMO_EPOCHS) dataset=imagefolder dataset.root=$(CIFAR10_DIR) \
	    dataset.val_images=2000 hydra.run.dir=$(DEMO_RUNS)/$$m || exit 1; done
	$(PY) scripts/package_demo.py --runs $(DEMO_RUNS) --cifar $(CIFAR10_DIR)

bench-forward: $(STAMP)
	$(PY) scripts/bench_forward.py --precision-models vit_cifar10_demo,resnet_cifar10_demo

clean-outputs:
	rm -rf outputs/* multirun
	touch outputs/.gitkeep
