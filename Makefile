# Two commands for a fresh machine (see README):  make run   |   make test
PY ?= python3
VENV := .venv
BIN := $(abspath $(VENV)/bin)
export PATH := $(BIN):$(PATH)
export MLFLOW_DISABLE_TELEMETRY := true
export GX_ANALYTICS_ENABLED := false
export DVC_NO_ANALYTICS := 1
export DO_NOT_TRACK := 1

.PHONY: setup gpu-check data data-check run paper test bench clean dvc-graph sweep

# GPU=1 (make setup GPU=1): TensorFlow with CUDA 12 from requirements-gpu.lock instead of tensorflow-cpu.
GPU ?= 0
ifeq ($(GPU),1)
LOCK := requirements-gpu.lock
OTHER_TF := tensorflow-cpu
else
LOCK := requirements.lock
OTHER_TF := tensorflow
endif
STAMP := $(VENV)/.installed-$(LOCK)

$(STAMP): $(LOCK) pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	@if $(BIN)/pip show -q $(OTHER_TF) 2>/dev/null; then echo "switching TensorFlow: removing $(OTHER_TF)"; $(BIN)/pip uninstall -q -y $(OTHER_TF); fi
	$(BIN)/pip install -q -r $(LOCK)
	$(BIN)/pip install -q --no-deps -e .
	rm -f $(VENV)/.installed $(VENV)/.installed-*
	touch $@

setup: $(STAMP)

# Resolve the GPU lock against PyPI without installing anything (downloads the ~3 GB of CUDA wheels once).
gpu-check: setup
	$(BIN)/pip install --dry-run --ignore-installed -q -r requirements-gpu.lock && echo "requirements-gpu.lock resolves"

# data/ is versioned by data.dvc; on a fresh clone it is rebuilt (deterministically) from the phantom source.
data: setup
	@if [ ! -d data ]; then \
	  echo "data/ absent: recreating the default dataset (phantom + import, params.yaml: data)"; \
	  mrisynth data default && dvc add -q data && \
	  { git diff --quiet HEAD -- data.dvc 2>/dev/null || echo "WARNING: recreated data/ differs from data.dvc: expected on a CPU of another NumPy SIMD level than the one that wrote it (a few pixels of some images; docs/data.md: Versioned data)"; }; \
	fi

# The whole default dataset rebuilt in a temporary folder and compared with data.dvc (make test checks six cases).
data-check: setup
	MRISYNTH_FULL_DATA_CHECK=1 python -m pytest -q tests/test_cli.py::test_default_data_recreation_matches_data_dvc

run: data
	dvc repro
	@python -m mrisynth.ops.next_steps

# The paper profile as a named DVC experiment: the paper's method (pix2pix, full synthesis, lowest-val-loss
# checkpoint, no DiffAugment, one generator, every image alike in a batch), 256 px, GAN 100 epochs (paper filters), segmenter up to 50
# epochs without early stopping (patience 50) and one pass per arm per epoch as the paper, 30 -> 300,
# the paper's four arms x three seeds (no copy-paste control), the paper-sized segmenter (16 base filters, batch 8, lr 1e-3).
PAPER_OVERRIDES := -S preprocess.image_size=256 -S train_gan.epochs=100 -S train_gan.width=1.0 \
  -S train_segmenter.epochs=50 -S train_segmenter.patience=50 -S train_segmenter.steps_per_epoch=0 \
  -S train_segmenter.equal_steps=false -S train_segmenter.base_filters=16 -S train_segmenter.batch_size=8 \
  -S train_segmenter.learning_rate=0.001 -S 'train_segmenter.seeds=[1,2,3]' -S augment.factor=10 \
  -S train_gan.generator=pix2pix -S train_gan.synthesis=full -S train_gan.select=val_loss -S train_gan.diffaugment=none \
  -S train_gan.disc_blocks=0 -S train_gan.draws=1 -S train_segmenter.real_share=null -S augment.harmonise=none \
  -S 'train_segmenter.arms=[none,classic,gan,classic+gan]'
paper: data
	dvc exp run -f -n paper $(PAPER_OVERRIDES)

# The validation sweep behind the default profile (docs/synthetic-data.md): each variant a named DVC experiment in the
# workspace, 2 segmenter seeds, 4 arms (no copy-paste control: it has no generator, so no lever changes it). Each
# variant's pipeline stops at train_segmenter, BEFORE gan_usefulness and evaluate (the stages that read the test split):
# pipelines/sweep_summary.py scores it on the validation split only (reports/sweep/<name>.json, reports/sweep.md), so
# no test number exists while the winner is chosen. (DVC's -S reads a comma as a sweep: DiffAugment parts are joined
# with +.) Stage output goes to work/sweep-<name>.log. Apply the winner with `dvc exp apply <name>` or by editing
# params.yaml, then `make run` for its verdict. `make sweep SWEEP_VARIANTS="default fm10"` runs some of them.
# SWEEP_ARMS: the small protocol's segmenter seeds and arms (the full protocol keeps params.yaml's)
SWEEP_ARMS := -S 'train_segmenter.seeds=[1,2]' -S 'train_segmenter.arms=[none,classic,gan,classic+gan]'
SWEEP_PAPER := -S augment.harmonise=none -S train_gan.diffaugment=none -S train_gan.draws=1 -S train_gan.generator=pix2pix -S train_gan.synthesis=full -S train_gan.select=val_loss -S train_gan.epochs=30 -S train_segmenter.real_share=null
SWEEP_LONG := -S augment.harmonise=none -S train_gan.draws=1 -S train_gan.select=last -S train_gan.epochs=100 -S train_gan.diffaugment=translation+cutout+color
SWEEP_DEFAULT := $(SWEEP_LONG) -S train_gan.generator=spade -S train_gan.synthesis=inpaint -S train_segmenter.real_share=null
SWEEP_VARIANTS ?= paper full-long inpaint inpaint-spade default fm10 fm10-alpha5 tex20 noise tex20-noise harmonise
# SWEEP_PROTOCOL=full, for a variant that changes nothing before augment (`filter`, `seg-long`): params.yaml's segmenter
# seeds, arms (the copy-paste control included, so an adopted variant's `dvc repro` finds train_segmenter in DVC's run
# cache) and generator draws (5 x 2), and only the stages augment and train_segmenter rerun (dvc exp run -s), so run right after
# `make run` in the same workspace it keeps that run's tune and trained generators and compares with that run's
# validation numbers. (-s because dvc.yaml over-declares: tune lists the whole augment section, which its default
# image objective does not read - tune's study hash leaves augment out - and its output names its MLflow run.)
SWEEP_PROTOCOL ?= small
ifeq ($(SWEEP_PROTOCOL),full)
SWEEP_ARMS :=
SWEEP_TARGETS := -s augment train_segmenter
else
SWEEP_TARGETS := train_segmenter
endif
sweep-paper := $(SWEEP_PAPER)
sweep-full-long := $(SWEEP_LONG) -S train_segmenter.real_share=0.5 -S train_gan.generator=pix2pix -S train_gan.synthesis=full
sweep-inpaint := $(SWEEP_LONG) -S train_segmenter.real_share=0.5 -S train_gan.generator=pix2pix -S train_gan.synthesis=inpaint
sweep-inpaint-spade := $(SWEEP_LONG) -S train_segmenter.real_share=0.5 -S train_gan.generator=spade -S train_gan.synthesis=inpaint
sweep-inpaint-spade-mixed := $(SWEEP_DEFAULT)
# default, fm10, fm10-alpha5: the texture levers with alpha FIXED (tune off) so that each row changes one thing. 22.88 is the
# alpha tune chose for the default profile in the AMD run committed then (31699d6): `default` is that run's generator draw 1.
SWEEP_NOTUNE := $(SWEEP_DEFAULT) -S tune.n_trials=0
SWEEP_FIXED := $(SWEEP_NOTUNE) -S train_gan.alpha=22.881136684755237
sweep-default := $(SWEEP_FIXED)
sweep-fm10 := $(SWEEP_FIXED) -S train_gan.feature_matching=10.0
sweep-fm10-alpha5 := $(SWEEP_NOTUNE) -S train_gan.feature_matching=10.0 -S train_gan.alpha=5.0
# tex20: the texture-energy term (core/losses.py texture) at weight 20, about alpha's: both are intensity differences
sweep-tex20 := $(SWEEP_FIXED) -S train_gan.texture=20.0
# noise: the spade generator with noise injection at every decoder scale (core/models.py noise_injection); alpha fixed
sweep-noise := $(SWEEP_FIXED) -S train_gan.generator=spade-noise
# tex20-noise: both (the texture term moved local texture, not across-image variety; noise may add the variety)
sweep-tex20-noise := $(SWEEP_FIXED) -S train_gan.generator=spade-noise -S train_gan.texture=20.0
# harmonise: the default generator; each inpainted region shifted to its host's local normal-tissue level (core/inpaint.py)
sweep-harmonise := $(SWEEP_FIXED) -S augment.harmonise=mean
# filter: params.yaml's default profile (its tune, generators and draws) with the synthetic-sample filter at tau 0.6, pool 2
# (augment/sample_filter.py); meant for SWEEP_PROTOCOL=full (above)
sweep-filter := -S augment.filter_dice=0.6 -S augment.filter_pool=2.0
# seg-long: the segmenter recipe, not the generator: up to 40 epochs with patience 8 (params.yaml until 2026-12-08: 20 and
# 4; min_epochs 10 unchanged) for every arm; adopted by its rule, now params.yaml's default, so against today's default it
# changes nothing (kept so its record can be reproduced from the old params; docs/synthetic-data.md)
sweep-seg-long := -S train_segmenter.epochs=40 -S train_segmenter.patience=8
# real-half: half of every augmented arm's batch elements drawn from the 30 real slices (train_segmenter.real_share 0.5,
# issue 19 item 5); meant for SWEEP_PROTOCOL=full, against whichever default the seg-long rule left
sweep-real-half := -S train_segmenter.real_share=0.5
# The variants are the variables named sweep-<name> above (one place: define one and `make sweep SWEEP_VARIANTS=<name>`
# runs it); the recipe's case statement is generated from them, one `<name>) o="<its -S set>";;` branch each.
# Only variables defined in this file count (not a sweep-* from the environment or the command line). A value is put in
# double quotes and eval'd: single quotes pass through, a double quote, $ or backquote in a value would not.
SWEEP_NAMES = $(sort $(patsubst sweep-%,%,$(foreach v,$(filter sweep-%,$(.VARIABLES)),$(if $(filter file,$(origin $(v))),$(v)))))
sweep_case = $(1)) o="$(sweep-$(1))";;
# Every variant starts from the same params.yaml (saved first, restored before each variant and on any exit): a
# workspace experiment leaves its params applied, so without this a variant would inherit the previous one's -S values.
sweep: data
	mkdir -p work
	@cp params.yaml work/sweep-params.yaml; trap 'cp work/sweep-params.yaml params.yaml' EXIT; \
	for v in $(SWEEP_VARIANTS); do \
	  cp work/sweep-params.yaml params.yaml; \
	  case $$v in $(foreach n,$(SWEEP_NAMES),$(call sweep_case,$(n))) \
	    *) echo "unknown variant $$v (defined: $(SWEEP_NAMES))"; exit 2;; esac; \
	  echo "sweep: $$v"; eval dvc exp run -f -n $$v $(SWEEP_ARMS) $$o $(SWEEP_TARGETS) > work/sweep-$$v.log 2>&1 || exit 1; \
	  python pipelines/sweep_summary.py $$v >> work/sweep-$$v.log 2>&1 || exit 1; \
	done
	python pipelines/sweep_summary.py

# Two xdist workers (PYTEST_WORKERS=0 for one process): the CI machine has 2 cores and most tests are single-threaded
# TensorFlow start-up and subprocess waits. The long end-to-end tests go first (tests/conftest.py) and --maxschedchunk 1
# hands tests out two at a time, so those long ones are shared between the workers (xdist's default first chunk would
# give every one of them to the first worker) and neither worker idles at the end.
PYTEST_WORKERS ?= 2
test: setup
	python -m pytest -q -p randomly -n $(PYTEST_WORKERS) --maxschedchunk 1 --durations=25

# Every benchmark side by side -> reports/bench.json, the table in docs/benchmarks.md, an MLflow run `bench`.
bench: setup
	python bench/run_all.py

# Recompute each stage's code deps and params in dvc.yaml from the imports (tests/ops/test_dvcgraph.py checks them).
dvc-graph: setup
	python -m mrisynth.ops.dvcgraph --write

clean:
	rm -rf work reports/gx_docs

# A local team stack (docs/team.md): PostgreSQL 15 + S3 (SeaweedFS) + MLflow server
# on 127.0.0.1, state in .team/ (MRISYNTH_TEAM_DIR). `make team-up`, then `source .team/env.sh`; `make team-down`.
.PHONY: team-up team-down team-status
team-up: setup
	mrisynth team up

team-down:
	mrisynth team down

team-status:
	mrisynth team status
