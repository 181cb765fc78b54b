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
# mpirun binds each rank to one core; ranks with several threads need --bind-to none.
MPIBIND  = $(if $(filter-out 1,$(RANK_THREADS)),--bind-to none)
DEMO_DIR ?= data/demo
RUN_DIR  ?= runs/tiny
DEMO_STEPS ?= 300
PROMPT   ?= The meaning of
# Debian's python3: python3-torch and python3-matplotlib (deps.sh --bench) install there.
PYTHON   ?= /usr/bin/python3
MVD_STEPS ?= 3000
# bf16 GEMMs: 1.5x faster where the CPU has AVX512-BF16, the same numbers elsewhere
MVD_PRECISION ?= bf16

export OMP_NUM_THREADS ?= 2
export OPENBLAS_NUM_THREADS ?= 2

.PHONY: all build deps configure test test-asan demo corpus bench moe-vs-dense bench-gpu gpu-bundle clean

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

# The CPU test suite again, built with AddressSanitizer and UBSan in its own
# build dir (CMake option GLAM_SANITIZE). A UBSan finding stops the program;
# leaks are not checked (Open MPI leaks from the components it unloads); a huge
# allocation returns null, so it ends as std::bad_alloc as in a normal build.
ASAN_BUILD ?= build-asan
ASAN_ENV = ASAN_OPTIONS=detect_leaks=0:allocator_may_return_null=1:detect_stack_use_after_return=0:abort_on_error=0 \
           UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1
# Left out of the sanitizer run, each for its reason (and nothing else):
#   bench_torch_peer  times glam against PyTorch (only where torch is installed):
#                     ASan's slowdown makes the comparison meaningless
#   plan_memory_vs_run*  compares the process's peak resident memory with the
#                     plan: ASan's shadow memory, redzones and quarantine add 45-80%
#   cuda_emu_*        not built with GLAM_SANITIZE: `make test` runs them under
#                     ASan already (cuda_emu_*_asan, with the emulation's fibers
#                     announced to ASan), see CMakeLists.txt
#   fuzz_*            run the release tools on ~2,000 mutants with a per-run timeout;
#                     under ASan they take 14 minutes and the deepest JSON nestings
#                     time out: `make test` runs them (3 minutes), and the readers
#                     they drive are the same code the sanitized suite runs on good files
#   rundir_slurm      starts SLURM daemons and a requeued job (up to 150 s loaded):
#                     it tests job control, not memory; `make test` runs it
#   mpi_savings_8x2, mpi_savings_4x4  16 ranks oversubscribed on the cores (25 s
#                     each in `make test`): 16 sanitized ranks on 2 cores would take
#                     minutes; the same code runs sanitized on 1 to 6 ranks (1x1..3x2)
ASAN_EXCLUDE ?= ^bench_torch_peer|^plan_memory_vs_run|^fuzz_|^rundir_slurm|^mpi_savings_(8x2|4x4)$$
test-asan: deps
	cmake -S . -B $(ASAN_BUILD) -DGLAM_CUDA=OFF -DGLAM_SANITIZE=ON
	cmake --build $(ASAN_BUILD) -j $(JOBS)
	$(ASAN_ENV) ctest --test-dir $(ASAN_BUILD) --output-on-failure -j 1 $(if $(ASAN_EXCLUDE),-E '$(ASAN_EXCLUDE)')

corpus: build
	scripts/make-corpus.sh $(DEMO_DIR) $(BUILD)

demo: corpus
	OMP_NUM_THREADS=$(RANK_THREADS) OPENBLAS_NUM_THREADS=$(RANK_THREADS) \
	$(MPIRUN) $(MPIBIND) -np $(NP) -x OMP_NUM_THREADS -x OPENBLAS_NUM_THREADS \
	    $(BUILD)/glam train --config input/glam-tiny.cfg --run-dir $(RUN_DIR) --mesh $(MESH) \
	    --train.steps $(DEMO_STEPS) --overwrite
	@echo "# sampled (temperature 0.8, top-k 40): what the model has learnt"
	$(BUILD)/glam generate --run-dir $(RUN_DIR) --prompt "$(PROMPT)" --max-tokens 48 --temperature 0.8 --top-k 40 --seed 7
	@echo "# greedy (the likeliest token each time): a model this small soon repeats itself"
	$(BUILD)/glam generate --run-dir $(RUN_DIR) --prompt "$(PROMPT)" --max-tokens 48

# Benchmarks print figures and ratios against a peer measured in the same run.
bench: corpus
	@scripts/deps.sh --bench
	python3 bench/mesh_bench.py --build $(BUILD)
	$(PYTHON) bench/train_bench.py --build $(BUILD)

# MoE vs dense at equal activated FLOPs on the demo corpus: docs/MOE_VS_DENSE.md.
moe-vs-dense: corpus
	@scripts/deps.sh --bench
	$(PYTHON) bench/moe_vs_dense.py --build $(BUILD) --steps $(MVD_STEPS) --val-every 100 \
	    --set train.cpu_precision=$(MVD_PRECISION)

# On a GPU: tokens/s and MFU of a glam-0.1b-64e-shaped and a 1.7B-shaped model.
BENCH_GPU_CONFIGS ?= input/glam-0.1b-64e.cfg input/glam-1.7b.cfg
bench-gpu: deps
	cmake -S . -B $(BUILD) -DGLAM_CUDA=ON
	cmake --build $(BUILD) -j $(JOBS) --target bench_gpu
	$(BUILD)/bench_gpu --rows 8 --steps 5 $(BENCH_GPU_CONFIGS)

# GPU machines without MPI/HDF5/Boost: build with CUDA here, carry the archive
# there, unpack it and run bin/ programs through run.sh (docs/GPU.md).
GPU_BUNDLE ?= .gpu/glam-gpu.tar.gz
# The programs are those the bundle's check.sh runs (scripts/gpu-bundle.sh --programs).
gpu-bundle: deps
	cmake -S . -B $(BUILD) -DGLAM_CUDA=ON
	cmake --build $(BUILD) -j $(JOBS) --target $$(scripts/gpu-bundle.sh --programs)
	mkdir -p $(dir $(GPU_BUNDLE))
	scripts/gpu-bundle.sh $(BUILD) $(GPU_BUNDLE)

clean:
	rm -rf $(BUILD)

# glam plan: the plan table of every paper config (docs/PLAN.md), the performance
# model against this machine, and PNG plots of a run's metrics.jsonl.
.PHONY: plan-table plan-check plot
PLOT_PYTHON ?= $(shell for p in python3 /usr/bin/python3; do $$p -c 'import matplotlib' 2>/dev/null && echo $$p && break; done)

plan-table: build
	python3 tools/plan-table --glam $(BUILD)/glam

plan-check: corpus
	python3 bench/plan_check.py --build $(BUILD)

plot:
	@test -n "$(PLOT_PYTHON)" || { echo "make plot: no python3 with matplotlib (make deps)"; exit 2; }
	$(PLOT_PYTHON) tools/plot $(RUN_DIR)
