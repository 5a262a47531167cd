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

.PHONY: all setup configure build demo test test-sanitize test-main format clean
all: build

setup:
	@mkdir -p $(BUILD)
	@bash scripts/setup.sh > $(BUILD)/setup.env

configure: setup
	@source $(BUILD)/setup.env && cmake -S . -B $(BUILD) -G Ninja -DCMAKE_BUILD_TYPE=$(CMAKE_BUILD_TYPE) \
	  -DCMAKE_PREFIX_PATH="$$TORCH_PREFIX" $${VENV:+-DFLUXTRAIN_PYTHON="$$VENV/bin/python"} $(CMAKE_ARGS) > $(BUILD)/configure.log \
	  || { cat $(BUILD)/configure.log; exit 1; }

build: configure
	@cmake --build $(BUILD) -j $(JOBS) $(if $(TARGETS),--target $(TARGETS))

demo: build
	@BUILD=$(BUILD) bash scripts/demo.sh

# The torch-free parser and core under AddressSanitizer + UBSan (clang, with a bounded libFuzzer run).
test-sanitize: setup
	@cmake -S . -B $(SANITIZE_BUILD) -G Ninja -DCMAKE_BUILD_TYPE=Debug -DCMAKE_CXX_COMPILER=clang++ \
	  -DFLUXTRAIN_WITH_TORCH=OFF -DFLUXTRAIN_SANITIZE=address,undefined -DFLUXTRAIN_FUZZ=ON > $(BUILD)/sanitize-configure.log \
	  || { cat $(BUILD)/sanitize-configure.log; exit 1; }
	@cmake --build $(SANITIZE_BUILD) -j $(JOBS)
	@ctest --test-dir $(SANITIZE_BUILD) --output-on-failure -j $(JOBS)

test-main: build
	@ctest --test-dir $(BUILD) --output-on-failure -j $(JOBS)

# The main suite runs last so that its summary line ends the output.
test: test-sanitize
	@$(MAKE) --no-print-directory test-main

format:
	@clang-format -i $$(git ls-files '*.cpp' '*.h')

clean:
	rm -rf $(BUILD) $(SANITIZE_BUILD)
