"""test_sanitizers.py: runs the kernel and loader tests against an AddressSanitizer +
UndefinedBehaviorSanitizer build of the engine (tools/sanitize.sh builds it into a temporary
folder and runs pytest in a subprocess with the sanitizer runtime preloaded). Any out-of-bounds
access, use after free or undefined behaviour in the C code aborts that run and fails this test.
Skipped only where the compiler has no sanitizer runtimes (or the tests run without the source
tree); PYLLM_SANITIZE=0 skips it on purpose. cmake and Cython, which the build needs outside pip's
isolated build environment, are test dependencies.

The subset is chosen to stay within a few minutes on 2 cores (the ASan build of the extension is
a third of it): the kernel tables against the scalar reference on every ISA, k-quant dot products,
repacking, the engine's bindings and size checks, the load-defect regressions and the thread pool
(teams, barriers, fork and exit with live workers). The whole
suite runs under the sanitizers with `tools/sanitize.sh` (no arguments)."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(REPO, "tools", "sanitize.sh")

# the tests run under the sanitizers (short enough for CI: see the module docstring). Left out: the
# GGUF load-defect cases (their time goes into rewriting a 32000-token GGUF in Python, not into C)
# and the model-level repack tests beyond one (the same packed gemms as test_packed_gemm_*, on
# larger models); `tools/sanitize.sh` with these files and no -k runs them all.
SUBSET = ["tests/test_kernels.py", "tests/test_kquants.py", "tests/test_repack.py",
          "tests/test_engine_bindings.py", "tests/test_load_defects.py",
          "tests/test_thread_env.py"]  # the thread pool: teams, barriers, fork, exit mid-forward
DESELECT = ("not (gguf or test_model_partial_row_group_and_tied_embeddings "
            "or (test_model_logits_with_and_without_repack and q8_0))")


def _sanitizer_runtime_missing() -> str | None:
    if os.environ.get("PYLLM_SANITIZE") == "0":
        return "PYLLM_SANITIZE=0"
    if not os.path.exists(SCRIPT) or not os.path.exists(os.path.join(REPO, "csrc")):
        return "needs the source tree (tools/sanitize.sh, csrc/)"
    cc = os.environ.get("CC", "cc")
    if shutil.which(cc) is None:
        return f"C compiler {cc!r} not found"
    for lib in ("libasan.so", "libubsan.so"):
        found = subprocess.run([cc, f"-print-file-name={lib}"], capture_output=True, text=True).stdout.strip()
        if not os.path.isabs(found) or not os.path.exists(found):
            return f"{cc} has no sanitizer runtime {lib}"
    return None


@pytest.mark.skipif(_sanitizer_runtime_missing() is not None, reason=str(_sanitizer_runtime_missing()))
def test_kernels_and_loaders_clean_under_asan_ubsan(tmp_path):
    env = dict(os.environ, SANITIZE_DIR=str(tmp_path / "asan"), PYTHON=sys.executable)
    env.pop("PYTHONPATH", None)  # the script points it at its own copy of the package
    r = subprocess.run(["bash", SCRIPT, *SUBSET, "-k", DESELECT, "-q", "-x"], cwd=REPO, env=env,
                       capture_output=True, text=True, timeout=1800)
    out = r.stdout + r.stderr
    assert "ERROR: AddressSanitizer" not in out and "runtime error:" not in out, out[-20000:]
    assert r.returncode == 0, out[-20000:]
    assert " passed" in r.stdout, out[-5000:]
