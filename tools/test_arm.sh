#!/usr/bin/env bash
# tools/test_arm.sh: builds the C core (no Python) for aarch64 with the cross compiler and runs the NEON
# tests under qemu-user: tests/neon/test_kernels_neon.c (every NEON table against the scalar reference)
# on three emulated CPUs (max: dotprod + i8mm; cortex-a76: dotprod only; cortex-a53: neither, the
# fallback dispatch), then, with GGUF files given, tests/neon/generate_gguf.c (greedy generation) on each,
# on the tables picked automatically and on ones forced with PYLLM_ISA.
# Usage: tools/test_arm.sh [BUILD_DIR] [MODEL.gguf PROMPT_IDS EXPECTED_IDS EXPECTED_LOGITS]...
# Needs aarch64-linux-gnu-gcc and qemu-aarch64 (Debian: apt-get install gcc-aarch64-linux-gnu qemu-user).
set -euo pipefail
cd "$(dirname "$0")/.."
BUILD=${1:-build/arm64}
shift || true
CC=${CC_AARCH64:-aarch64-linux-gnu-gcc}
QEMU=${QEMU_AARCH64:-qemu-aarch64}
command -v "$CC" >/dev/null || { echo "test_arm.sh: $CC not found"; exit 3; }
command -v "$QEMU" >/dev/null || { echo "test_arm.sh: $QEMU not found"; exit 3; }
mkdir -p "$BUILD"
# the engine's flags (CMakeLists.txt): no FP contraction, so the scalar reference stays the reference
CFLAGS="-O2 -std=gnu11 -Wall -Wno-unused-function -fno-math-errno -ffp-contract=off -pthread -Icsrc -DPYLLM_NEON=1 -DPYLLM_NEON_I8MM=1"
objs=()
compile() { # src extra-flags...
    local src=$1; shift
    local obj="$BUILD/$(basename "${src%.c}").o"
    # rebuilt when any csrc file is newer (headers, and kernels_neon.c, which the dotprod / i8mm files include)
    if [ ! -f "$obj" ] || [ -n "$(find csrc -newer "$obj" | head -1)" ]; then
        "$CC" $CFLAGS "$@" -c "$src" -o "$obj"
    fi
    objs+=("$obj")
}
for f in csrc/*.c; do
    case "$f" in
    csrc/kernels_avx2.c|csrc/kernels_avx512.c) ;;
    csrc/kernels_neon_dotprod.c) compile "$f" -march=armv8.2-a+dotprod ;;
    csrc/kernels_neon_i8mm.c) compile "$f" -march=armv8.2-a+dotprod+i8mm ;;
    *) compile "$f" ;;
    esac
done
"$CC" $CFLAGS -static tests/neon/test_kernels_neon.c "${objs[@]}" -lm -o "$BUILD/test_kernels_neon"
"$CC" $CFLAGS -static tests/neon/generate_gguf.c "${objs[@]}" -lm -o "$BUILD/generate_gguf"
first=("$@") # the first model's files, for the bad-input checks
status=0
for cpu in "max neon-i8mm" "cortex-a76 neon-dotprod" "cortex-a53 neon"; do
    read -r cpu_name cpu_isa <<<"$cpu"
    echo "== qemu-aarch64 -cpu $cpu_name: test_kernels_neon (expects $cpu_isa)"
    env -u PYLLM_ISA "$QEMU" -cpu "$cpu_name" "$BUILD/test_kernels_neon" "$cpu_isa" || status=1
done
# end to end: each GGUF on the tables the dispatcher picks (-cpu max: neon-i8mm; cortex-a53: neon) and on
# ones PYLLM_ISA forces (-cpu max: neon-dotprod, scalar)
while [ $# -ge 4 ]; do
    for run in "max -" "cortex-a53 -" "max neon-dotprod" "max scalar"; do
        read -r cpu_name isa <<<"$run"
        echo "== qemu-aarch64 -cpu $cpu_name, PYLLM_ISA=$isa: generate_gguf $1"
        if [ "$isa" = - ]; then
            env -u PYLLM_ISA "$QEMU" -cpu "$cpu_name" "$BUILD/generate_gguf" "$1" "$2" "$3" "$4" || status=1
        else
            env PYLLM_ISA="$isa" "$QEMU" -cpu "$cpu_name" "$BUILD/generate_gguf" "$1" "$2" "$3" "$4" || status=1
        fi
    done
    shift 4
done
# bad input: a truncated file and a wrong magic are refused with a message (exit 2), never a crash
if [ ${#first[@]} -ge 4 ]; then
    head -c 200000 "${first[0]}" > "$BUILD/truncated.gguf"
    { printf 'GGUX'; tail -c +5 "${first[0]}"; } > "$BUILD/bad-magic.gguf"
    for bad in truncated bad-magic; do
        rc=0
        msg=$("$QEMU" -cpu max "$BUILD/generate_gguf" "$BUILD/$bad.gguf" "${first[1]}" "${first[2]}" "${first[3]}" 2>&1) || rc=$?
        echo "== $bad.gguf: exit $rc: $msg"
        [ $rc -eq 2 ] || status=1
    done
fi
exit $status
