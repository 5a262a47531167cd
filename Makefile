# fluxtrain: `make demo` runs the main job on the embedded default; `make test` runs every test.
# Both set up (Debian packages, cached Python venv with libtorch) and build first.
SHELL := /bin/bash
BUILD ?= build
SANITIZE_BUILD ?= build-sanitize
JOBS ?= $(shell nproc)
CMAKE_BUILD_TYPE ?= RelWithDebInfo
# More cmake -D options for `make configure`, and the targets of `make build` (default: all); the
# container images build with CMAKE_ARGS=-DFLUXTRAIN_TESTS=OFF TARGETS="fluxtrain fluxtrain_engine".
CMAKE_ARGS ?=
TARGETS ?=

.PHONY: all setup configure build demo gpu-bundle test test-sanitize sanitize-build fuzz test-main test-oldest-libtorch format clean
all: build

setup:
	@mkdir -p $(BUILD)
	@bash scripts/setup.sh > $(BUILD)/setup.env

configure: setup
	@source $(BUILD)/setup.env && cmake -S . -B $(BUILD) -G Ninja -DCMAKE_BUILD_TYPE=$(CMAKE_BUILD_TYPE) \
	  -DCMAKE_PREFIX_PATH="$$TORCH_PREFIX" $${VENV:+-DFLUXTRAIN_PYTHON="$$VENV/bin/python"} \
	  $${ARROW_DIR:+-DFLUXTRAIN_ARROW_DIR="$$ARROW_DIR"} $(CMAKE_ARGS) > $(BUILD)/configure.log \
	  || { cat $(BUILD)/configure.log; exit 1; }

build: configure
	@cmake --build $(BUILD) -j $(JOBS) $(if $(TARGETS),--target $(TARGETS))

demo: build
	@BUILD=$(BUILD) bash scripts/demo.sh

# One archive for the GPU proof on a lent GPU machine (bench/gpu_proof.sh, docs/performance.md):
# .gpu-proof/bundle.tar.xz, under 60 MiB; the device tool carries it with carry=[".gpu-proof"].
gpu-bundle: configure
	@cmake --build $(BUILD) -j $(JOBS) --target fluxtrain fluxtrain_engine fluxtrain_unit_tests fluxtrain_bench
	@BUILD=$(BUILD) bash bench/gpu_bundle.sh

# The torch-free parser and core under AddressSanitizer + UBSan (clang, with the libFuzzer targets).
sanitize-build: setup
	@cmake -S . -B $(SANITIZE_BUILD) -G Ninja -DCMAKE_BUILD_TYPE=Debug -DCMAKE_CXX_COMPILER=clang++ \
	  -DFLUXTRAIN_WITH_TORCH=OFF -DFLUXTRAIN_SANITIZE=address,undefined -DFLUXTRAIN_FUZZ=ON > $(BUILD)/sanitize-configure.log \
	  || { cat $(BUILD)/sanitize-configure.log; exit 1; }
	@cmake --build $(SANITIZE_BUILD) -j $(JOBS)

# Its tests, with a bounded run of each fuzz target (20-30 s).
test-sanitize: sanitize-build
	@ctest --test-dir $(SANITIZE_BUILD) --output-on-failure -j $(JOBS)

# Every fuzz target (tests/fuzz) for FUZZ_SECONDS seconds each, side by side: `make fuzz FUZZ_SECONDS=3600`.
# What they find stays in $(SANITIZE_BUILD)/tests/fuzz_*_corpus; a crash leaves crash-* in the ctest
# working folder $(SANITIZE_BUILD)/tests and fails the target.
FUZZ_SECONDS ?= 600
fuzz: sanitize-build
	@FLUXTRAIN_FUZZ_SECONDS=$(FUZZ_SECONDS) ctest --test-dir $(SANITIZE_BUILD) -L '^fuzz$$' --output-on-failure \
	  -j $(JOBS) --timeout $$(( $(FUZZ_SECONDS) + 600 ))

test-main: build
	@ctest --test-dir $(BUILD) --output-on-failure -j $(JOBS)

# The engine compiled (not linked) against the headers of the oldest libtorch of docker/Dockerfile.*
# (torch 2.8.0, the ROCm image's): an API newer than an image's libtorch fails here, not in the image
# build. The first run downloads that torch wheel once (~900 MB); docs/testing.md gives its times.
OLDEST_BUILD ?= build-oldest-libtorch
test-oldest-libtorch: setup
	@source $(BUILD)/setup.env && export ARROW_DIR && FLUXTRAIN_PYTHON_FOR_PIP="$${VENV:+$$VENV/bin/python}" \
	  FLUXTRAIN_OLDEST_BUILD=$(OLDEST_BUILD) JOBS=$(JOBS) bash scripts/check_oldest_libtorch.sh

# The main suite runs last so that its summary line ends the output.
test: test-sanitize
	@$(MAKE) --no-print-directory test-oldest-libtorch
	@$(MAKE) --no-print-directory test-main

format:
	@clang-format -i $$(git ls-files '*.cpp' '*.h')

clean:
	rm -rf $(BUILD) $(SANITIZE_BUILD) $(OLDEST_BUILD)
