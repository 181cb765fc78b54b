# glam: the two set-up commands are `make demo` and `make test`; each installs
# what it needs (Debian packages via scripts/deps.sh), configures and builds.
BUILD    ?= build
JOBS     ?= $(shell nproc)
GLAM_CUDA ?= AUTO
NP       ?= 1
# Open MPI refuses root without this; --oversubscribe allows more ranks than cores.
MPIRUN   ?= mpirun --allow-run-as-root --oversubscribe
DEMO_DIR ?= data/demo
RUN_DIR  ?= runs/tiny
DEMO_STEPS ?= 300
PROMPT   ?= The meaning of

export OMP_NUM_THREADS ?= 2
export OPENBLAS_NUM_THREADS ?= 2

.PHONY: all build deps configure test demo corpus clean

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
	$(MPIRUN) -np $(NP) $(BUILD)/glam train --config input/glam-tiny.cfg --run-dir $(RUN_DIR) \
	    --train.steps $(DEMO_STEPS) --overwrite
	$(BUILD)/glam generate --run-dir $(RUN_DIR) --prompt "$(PROMPT)" --max-tokens 48
	$(BUILD)/glam generate --run-dir $(RUN_DIR) --prompt "$(PROMPT)" --max-tokens 48 --temperature 0.8 --top-k 40 --seed 7

clean:
	rm -rf $(BUILD)
