# Custody — top-level entry points. `make demo` and `make test` work on a fresh Debian 12 /
# Ubuntu 22.04+ machine: both install what is missing first (scripts/install-deps.sh).
BUILD       ?= build
BUILD_TYPE  ?= RelWithDebInfo
JOBS        ?= $(shell nproc)
CMAKE_FLAGS ?=
FUZZ_SECONDS ?= 60

.PHONY: all deps configure build test check-clang demo bench fuzz format format-check clean

all: build

deps:
	@scripts/install-deps.sh

configure: deps
	@cmake -S . -B $(BUILD) -G Ninja -DCMAKE_BUILD_TYPE=$(BUILD_TYPE) -DCUSTODY_WERROR=ON $(CMAKE_FLAGS)

build: configure
	@cmake --build $(BUILD) -j $(JOBS)

# The whole suite: unit, adversarial, CLI, engine/model, corpus-replay and formatting checks, then
# the same tree built warning-free by the second supported compiler.
test: build
	@cd $(BUILD) && ctest --output-on-failure -j $(JOBS) --timeout 1200
	@$(MAKE) --no-print-directory check-clang

# Everything (tests and benchmarks included) must also compile with clang under -Werror: its
# diagnostics differ from gcc's, and libtorch's headers behave differently under it.
check-clang: deps
	@CC=clang CXX=clang++ cmake -S . -B build-clang -G Ninja -DCMAKE_BUILD_TYPE=$(BUILD_TYPE) \
	  -DCUSTODY_WERROR=ON $(CMAKE_FLAGS) >/dev/null
	@cmake --build build-clang -j $(JOBS)
	@echo "check-clang: the tree builds warning-free with clang"

# Seal, inspect, verify and run a model end to end, and compare with the plain model.
demo: build
	@scripts/demo.sh $(BUILD)

# Benchmarks in an optimised build; prints each figure beside its baseline and target.
bench: deps
	@cmake -S . -B build-bench -G Ninja -DCMAKE_BUILD_TYPE=Release -DCUSTODY_BUILD_TESTS=OFF \
	  -DCUSTODY_BUILD_BENCH=ON $(CMAKE_FLAGS)
	@cmake --build build-bench -j $(JOBS)
	@scripts/bench.sh build-bench

# libFuzzer targets (clang, ASan + UBSan), run for FUZZ_SECONDS each over the seed corpora.
fuzz: deps
	@CC=clang CXX=clang++ cmake -S . -B build-fuzz -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo \
	  -DCUSTODY_BUILD_FUZZ=ON -DCUSTODY_BUILD_TESTS=OFF -DCUSTODY_BUILD_BENCH=OFF \
	  -DCUSTODY_WITH_TORCH=OFF -DCUSTODY_WITH_OPENCV=OFF
	@cmake --build build-fuzz -j $(JOBS)
	@scripts/fuzz.sh build-fuzz $(FUZZ_SECONDS)

format:
	@git ls-files '*.cc' '*.h' | xargs clang-format -i

format-check:
	@scripts/check-format.sh

clean:
	rm -rf $(BUILD) build-bench build-fuzz build-clang
