# glam: the two set-up commands are `make demo` and `make test`; each installs
# what it needs (Debian packages via scripts/deps.sh), configures and builds.
BUILD    ?= build
JOBS     ?= $(shell nproc)
GLAM_CUDA ?= AUTO
# The demo trains on a 2x2 mesh: 4 ranks (data x model), one thread each.
NP       ?= 4
MESH     ?= 2x2
RANK_THREADS ?= 1
# Open MPI refuses root without this; --oversubscribe allows more ranks than cores.
MPIRUN   ?= mpirun --allow-run-as-root --oversubscribe
DEMO_DIR ?= data/demo
RUN_DIR  ?= runs/tiny
DEMO_STEPS ?= 300
PROMPT   ?= The meaning of
# Debian's python3: python3-torch and python3-matplotlib (deps.sh --bench) install there.
PYTHON   ?= /usr/bin/python3
MVD_STEPS ?= 1000

export OMP_NUM_THREADS ?= 2
export OPENBLAS_NUM_THREADS ?= 2

.PHONY: all build deps configure test demo corpus bench moe-vs-dense clean

all: build

deps:
	@scripts/deps.sh

$(BUILD)/CMakeCache.txt:
	cmake -S . -B $(BUILD) -DGLAM_CUDA=$(GLAM_CUDA)

configure: $(BUILD)/CMakeCache.txt

build: deps configure
	cmake --build $(BUILD) -j $(JOBS)

test: build
	ctest --test-dir $(BUILD) --output-on-failure -j 1

corpus: build
	scripts/make-corpus.sh $(DEMO_DIR) $(BUILD)

demo: corpus
	OMP_NUM_THREADS=$(RANK_THREADS) OPENBLAS_NUM_THREADS=$(RANK_THREADS) \
	$(MPIRUN) -np $(NP) -x OMP_NUM_THREADS -x OPENBLAS_NUM_THREADS \
	    $(BUILD)/glam train --config input/glam-tiny.cfg --run-dir $(RUN_DIR) --mesh $(MESH) \
	    --train.steps $(DEMO_STEPS) --overwrite
	$(BUILD)/glam generate --run-dir $(RUN_DIR) --prompt "$(PROMPT)" --max-tokens 48
	$(BUILD)/glam generate --run-dir $(RUN_DIR) --prompt "$(PROMPT)" --max-tokens 48 --temperature 0.8 --top-k 40 --seed 7

# Benchmarks print figures and ratios against a peer measured in the same run.
bench: corpus
	@scripts/deps.sh --bench
	python3 bench/mesh_bench.py --build $(BUILD)
	$(PYTHON) bench/train_bench.py --build $(BUILD)

# MoE vs dense at equal activated FLOPs on the demo corpus: docs/MOE_VS_DENSE.md.
moe-vs-dense: corpus
	@scripts/deps.sh --bench
	$(PYTHON) bench/moe_vs_dense.py --build $(BUILD) --steps $(MVD_STEPS)

clean:
	rm -rf $(BUILD)
