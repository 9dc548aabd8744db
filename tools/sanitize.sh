#!/usr/bin/env bash
# tools/sanitize.sh: builds pyllm's C extension with AddressSanitizer + UndefinedBehaviorSanitizer
# in its own build folder and runs pytest against a copy of the package that uses it.
#
# Usage (from anywhere):
#   tools/sanitize.sh                                  # whole test suite (slow: ~5x a normal run)
#   tools/sanitize.sh tests/test_kernels.py tests/test_gguf.py -x   # given files / pytest options
#   SANITIZE_DIR=/tmp/asan tools/sanitize.sh ...       # build + package copy there (default build/asan)
#   SANITIZE_BUILD_ONLY=1 tools/sanitize.sh            # only build; prints the package copy's path
#   SANITIZE_JOBS=4 tools/sanitize.sh ...              # parallel compile jobs (default 2)
#
# What it does:
#   1. configures CMake in $SANITIZE_DIR/build with -fsanitize=address,undefined,
#      -fno-omit-frame-pointer and -fno-sanitize-recover=undefined (so any undefined behaviour
#      aborts the run instead of printing and continuing), and builds _engine;
#   2. copies the Python package to $SANITIZE_DIR/pkg/pyllm with the sanitized _engine*.so, so the
#      normal build (pyllm/_engine*.so, build/) is never touched;
#   3. runs `python -m pytest` from $SANITIZE_DIR/pkg (so `import pyllm` finds the copy, checked
#      before the run) with the compiler's libasan in LD_PRELOAD (Python itself is not
#      instrumented, so the runtime must be loaded first) and
#        ASAN_OPTIONS=detect_leaks=0 (CPython keeps interned objects alive by design),
#                     abort_on_error=1, allocator_may_return_null=1 (tests that ask the C code
#                     for absurd sizes expect its NULL check, not ASan's own abort);
#        UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1;
#        PYTHONMALLOC=malloc (Python objects go through ASan's allocator too);
#        PYLLM_SANITIZER_BUILD=1 (timing assertions in tests allow for the ~5-10x slowdown).
#   A sanitizer report ends the process with a non-zero status, which pytest reports as a crash.
# Needs gcc or clang with the sanitizer runtimes (Debian: libasan / libubsan, shipped with gcc).
set -euo pipefail

caller_dir="$(pwd)"
repo="$(cd "$(dirname "$0")/.." && pwd)"
out="${SANITIZE_DIR:-$repo/build/asan}"
jobs="${SANITIZE_JOBS:-2}"
cc="${CC:-cc}"
python="${PYTHON:-python}"

asan_lib="$("$cc" -print-file-name=libasan.so)"
if [[ "$asan_lib" != /* || ! -e "$asan_lib" ]]; then
  echo "sanitize.sh: $cc has no AddressSanitizer runtime (libasan.so not found)" >&2
  exit 77
fi

san_flags="-fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=undefined -g"
mkdir -p "$out"
cmake -S "$repo" -B "$out/build" -DCMAKE_BUILD_TYPE=Release \
  -DCMAKE_C_COMPILER="$cc" \
  -DPython_EXECUTABLE="$(command -v "$python")" \
  -DCMAKE_C_FLAGS="$san_flags" \
  -DCMAKE_MODULE_LINKER_FLAGS="-fsanitize=address,undefined" \
  -DCMAKE_SHARED_LINKER_FLAGS="-fsanitize=address,undefined" >/dev/null
cmake --build "$out/build" -j"$jobs" >/dev/null

# Fresh copy of the package (Python files, shipped model) plus the sanitized extension.
rm -rf "$out/pkg"
mkdir -p "$out/pkg"
cp -r "$repo/pyllm" "$out/pkg/pyllm"
find "$out/pkg/pyllm" \( -name '_engine*.so' -o -name '__pycache__' \) -prune -exec rm -rf {} +
cp "$out/build"/_engine*.so "$out/pkg/pyllm/"

export LD_PRELOAD="$asan_lib${LD_PRELOAD:+:$LD_PRELOAD}"
export ASAN_OPTIONS="detect_leaks=0:abort_on_error=1:allocator_may_return_null=1${ASAN_OPTIONS:+:$ASAN_OPTIONS}"
export UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1${UBSAN_OPTIONS:+:$UBSAN_OPTIONS}"
export PYTHONMALLOC=malloc
export PYLLM_SANITIZER_BUILD=1  # tests that time something allow for the sanitizers' slowdown
export PYTHONPATH="$out/pkg"

cd "$out/pkg"
"$python" - "$out/pkg" <<'EOF'
import os, sys
import pyllm, pyllm._engine
want = os.path.realpath(sys.argv[1])
got = os.path.realpath(pyllm._engine.__file__)
if not got.startswith(want + os.sep):
    sys.exit(f"sanitize.sh: imported {got}, not the sanitized copy under {want}")
print(f"sanitize.sh: using {got}", file=sys.stderr)
EOF
if [[ -n "${SANITIZE_BUILD_ONLY:-}" ]]; then
  echo "$out/pkg"
  exit 0
fi

args=()
for a in "$@"; do
  # test paths relative to the caller's folder or to the repository still resolve from pkg/
  path="${a%%::*}"
  if [[ "$a" == -* || "$a" == /* ]]; then args+=("$a")
  elif [[ -e "$caller_dir/$path" ]]; then args+=("$caller_dir/$a")
  elif [[ -e "$repo/$path" ]]; then args+=("$repo/$a")
  else args+=("$a"); fi
done
if [[ ${#args[@]} -eq 0 ]]; then args=("$repo/tests"); fi
exec "$python" -m pytest --rootdir="$repo" -p no:cacheprovider "${args[@]}"
