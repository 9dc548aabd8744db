#!/usr/bin/env bash
# tools/cuda_device_check.sh: the GPU check of the CUDA build target (issue 11), as one script for a session
# that is lent a GPU machine: builds the extension with -DPYLLM_CUDA=ON, runs tests/test_cuda.py against it
# and tests/test_cuda_forward.py (the GPU tests compare the kernels with the CPU's scalar reference, and
# whole models' logits and greedy continuations with the CPU engine's), then the benchmarks, and writes
# what happened under $OUT.
#
# What the machine must already have (it downloads nothing; the device tool's nvidia-h200 image has all of
# it: KINDS.md): nvcc (CUDA 12 or 13) on PATH or in $CUDACXX, a C compiler, CMake >= 3.21, and a python3
# with Cython >= 3, numpy, pytest, tokenizers and jinja2 (what `import pyllm` and the shipped model need),
# torch and transformers (the forward tests' random checkpoints; bench_cuda.py's peer), httpx and uvicorn
# (the server test). Nothing needs carrying: the working tree travels, and the build happens there.
#
# From a session with the device tool (one call; expect 5-8 minutes of device time, most of it making the
# 1.1B-shaped checkpoint and running transformers for bench_cuda.py; 16 cores build the extension):
#     run(command="bash tools/cuda_device_check.sh", timeout_s=600)
# then read the files that come back (at most 8, no deeper than $OUT/a/b): summary.txt (one line per
# stage, and the test counts), env.txt (GPU, driver, nvcc, python), build.log, test_cuda.log,
# test_cuda.xml (JUnit), bench.txt, bench.json (bench/bench_cuda_gemv.py: the GEMV kernels' time and
# GB/s on the 1.1B model's matrices, each matrix's 512-token matmul, and the GEMV / tensor-core crossover: the
# mma_min_tokens to set) and bench_model.json (bench/bench_cuda.py: prefill, decode and
# batch-16 decode against transformers bf16). Without $OUT (run by hand) they go to build/cuda-device-out/.
# Environment: PYTHON (default python3), BUILD (default build/cuda-device), TEST_TIMEOUT / GEMV_TIMEOUT /
# MODEL_TIMEOUT (seconds per stage: 200 / 80 / 200; a stage past its limit is stopped and said so in
# summary.txt, and the next one runs), CMAKE_CUDA_ARCHITECTURES
# (default: CMakeLists.txt's 80;90), PYTEST_ARGS (extra pytest arguments, e.g. "-k gemv").
# Exit status: 0 when the build and every test passed (GPU tests skipped count as a failure here: on a GPU
# machine they must run), else the first failing stage's.
set -uo pipefail
cd "$(dirname "$0")/.."
REPO=$PWD
OUT=${OUT:-$REPO/build/cuda-device-out}
PY=${PYTHON:-python3}
# each stage's limit (seconds), so that one that hangs still leaves the later ones their time within the
# device tool's 600 s a call: build ~1-2 min, then these
TEST_TIMEOUT=${TEST_TIMEOUT:-200}
GEMV_TIMEOUT=${GEMV_TIMEOUT:-80}
MODEL_TIMEOUT=${MODEL_TIMEOUT:-200}
BUILD=${BUILD:-build/cuda-device}
mkdir -p "$OUT"
SUMMARY=$OUT/summary.txt
: >"$SUMMARY"
note() { echo "$*" | tee -a "$SUMMARY"; }

{
    date -u
    nvidia-smi --query-gpu=name,driver_version,memory.total,compute_cap --format=csv 2>&1 || echo "nvidia-smi failed"
    command -v nvcc && nvcc --version 2>&1 | tail -2
    echo "CUDACXX=${CUDACXX:-}"
    "$PY" -c "import sys, numpy, Cython; print(sys.executable, sys.version.split()[0], 'numpy', numpy.__version__, 'cython', Cython.__version__)" 2>&1
    cmake --version | head -1
    nproc
} >"$OUT/env.txt" 2>&1

# 1. configure and build (the extension only; pip is not used, so nothing is fetched)
ARCH_ARG=()
[ -n "${CMAKE_CUDA_ARCHITECTURES:-}" ] && ARCH_ARG=("-DCMAKE_CUDA_ARCHITECTURES=$CMAKE_CUDA_ARCHITECTURES")
GEN=()
command -v ninja >/dev/null && [ ! -f "$BUILD/Makefile" ] && GEN=(-G Ninja)
start=$SECONDS
if cmake -S . -B "$BUILD" "${GEN[@]}" -DCMAKE_BUILD_TYPE=Release -DPYLLM_CUDA=ON "${ARCH_ARG[@]}" \
        -DPython_EXECUTABLE="$(command -v "$PY")" >"$OUT/build.log" 2>&1 &&
    cmake --build "$BUILD" -j "$(nproc)" >>"$OUT/build.log" 2>&1; then
    note "build: ok ($((SECONDS - start)) s)"
else
    note "build: FAILED ($((SECONDS - start)) s): see build.log"
    tail -30 "$OUT/build.log"
    exit 1
fi
SO=$(ls "$BUILD"/_engine*.so | head -1)

# 2. the tests, on a staged copy (pyllm/ with the CUDA extension, the tests, csrc/ and CMakeLists.txt for
#    the compile checks, bench/), so the working tree's own pyllm/_engine*.so is left as it was
STAGE=$(mktemp -d)
trap 'rm -rf "$STAGE"' EXIT
mkdir -p "$STAGE/tests"
cp -r pyllm csrc bench CMakeLists.txt pyproject.toml "$STAGE/"
cp -r tests/test_cuda.py tests/test_cuda_forward.py tests/conftest.py tests/fixtures "$STAGE/tests/"
rm -f "$STAGE"/pyllm/_engine*.so
cp "$SO" "$STAGE/pyllm/"
cd "$STAGE"
# the tests run from an empty directory (conftest.py) and start `python -m pyllm` children, which must import
# this staged package (nothing is installed on the GPU machine), as tests/test_cuda_emulation.py does
export PYTHONPATH="$STAGE"
start=$SECONDS
# shellcheck disable=SC2086
PYTHONUNBUFFERED=1 timeout -k 5 "$TEST_TIMEOUT" "$PY" -m pytest tests/test_cuda.py tests/test_cuda_forward.py -v -rs -p no:cacheprovider \
    --junitxml="$OUT/test_cuda.xml" \
    ${PYTEST_ARGS:-} >"$OUT/test_cuda.log" 2>&1
rc=$?
tail -15 "$OUT/test_cuda.log"
[ "$rc" -eq 124 ] && note "tests: TIMED OUT after $TEST_TIMEOUT s (TEST_TIMEOUT): the last test started is the last line of test_cuda.log"
note "tests: exit $rc ($((SECONDS - start)) s): $(tail -1 "$OUT/test_cuda.log")"
if grep -q "SKIPPED.*needs a PYLLM_CUDA=ON build and a CUDA device" "$OUT/test_cuda.log"; then
    note "GPU tests SKIPPED: $(grep -m1 'needs a PYLLM_CUDA=ON build' "$OUT/test_cuda.log")"
    [ "$rc" -eq 0 ] && rc=3
fi

# 3. the benchmarks (not tests: numbers to report, with the GPU's name): the GEMV kernels alone, then the
#    whole model against transformers (bench/bench_cuda.py; BENCH_ARGS adds its options)
start=$SECONDS
if PYTHONUNBUFFERED=1 timeout -k 5 "$GEMV_TIMEOUT" "$PY" bench/bench_cuda_gemv.py --json "$OUT/bench.json" \
        >"$OUT/bench.txt" 2>&1; then
    note "bench gemv: ok ($((SECONDS - start)) s): $(grep -c "one token's matmuls" "$OUT/bench.txt") types"
else
    note "bench gemv: FAILED ($((SECONDS - start)) s): $(tail -1 "$OUT/bench.txt")"
fi
start=$SECONDS
# shellcheck disable=SC2086
if PYTHONUNBUFFERED=1 timeout -k 5 "$MODEL_TIMEOUT" "$PY" bench/bench_cuda.py --json "$OUT/bench_model.json" ${BENCH_ARGS:-} \
        >>"$OUT/bench.txt" 2>&1; then
    note "bench model: ok ($((SECONDS - start)) s)"
else
    note "bench model: FAILED ($((SECONDS - start)) s): $(tail -1 "$OUT/bench.txt")"
fi
cat "$OUT/bench.txt"
exit "$rc"
