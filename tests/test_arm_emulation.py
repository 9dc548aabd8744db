"""The ARM NEON kernels, tested by emulation: tools/test_arm.sh cross-compiles the C core for aarch64
and runs, under qemu-user, the kernel test (every NEON table against the scalar reference, on a CPU with
dot products and i8mm, one with dot products only, one with neither) and greedy generation of the
shipped model from GGUF files pyllm writes here, compared with the ids and logits pyllm computes on this
machine. Needs aarch64-linux-gnu-gcc and qemu-aarch64 (Debian: gcc-aarch64-linux-gnu, qemu-user;
.ci/run installs them when it can); skipped, saying so, without them."""
import os
import shutil
import subprocess

import numpy as np
import pytest

import pyllm
from pyllm.gguf_export import export_gguf

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MISSING = [tool for tool in ("aarch64-linux-gnu-gcc", "qemu-aarch64") if shutil.which(tool) is None]

pytestmark = pytest.mark.skipif(
    bool(MISSING), reason=f"ARM emulation test needs {' and '.join(MISSING)} "
    "(apt-get install gcc-aarch64-linux-gnu qemu-user)")

N_GENERATED = 16


def write_reference(tmp_path, quant):
    """the GGUF file, the prompt ids, pyllm's greedy ids and its logits at the prompt's last position"""
    path = str(tmp_path / f"shakespeare-{quant}.gguf")
    export_gguf(pyllm.default_model_path(), path, quant=quant)
    model = pyllm.load(path, n_ctx=64, n_threads=2)
    prompt = model.tokenize("ROMEO:\n")
    seq = model.sequence()
    last = seq.append(prompt)
    files = [path]
    for name, values, fmt in (("prompt", prompt, "%d"), ("logits", last, "%.9g")):
        files.append(str(tmp_path / f"{name}-{quant}.txt"))
        np.savetxt(files[-1], np.asarray(values), fmt=fmt)
    generated = []
    for _ in range(N_GENERATED):
        generated.append(int(np.argmax(last)))  # the first of equal maxima, as the C driver takes
        last = seq.append([generated[-1]])
    files.insert(2, str(tmp_path / f"ids-{quant}.txt"))
    np.savetxt(files[2], np.asarray(generated), fmt="%d")
    return files


def test_neon_kernels_and_generation_under_qemu(tmp_path):
    args = [str(tmp_path / "build")]
    for quant in ("f32", "q8_0", "q4_0"):
        args += write_reference(tmp_path, quant)
    env = {k: v for k, v in os.environ.items() if k != "PYLLM_ISA"}
    r = subprocess.run(["bash", os.path.join(ROOT, "tools", "test_arm.sh"), *args], cwd=ROOT, env=env,
                       capture_output=True, text=True, timeout=900)
    out = r.stdout
    assert r.returncode == 0, out[-6000:] + r.stderr[-4000:]
    # every table ran where the emulated CPU has it, and the dispatcher picked the best one
    for isa, runs in (("neon", 3), ("neon-dotprod", 2), ("neon-i8mm", 1)):
        assert out.count(f"{isa}: all kernels match the scalar reference") == runs, out
    # each file generated on the tables picked (-cpu max: i8mm, cortex-a53: baseline) and forced by PYLLM_ISA
    for quant in ("f32", "q8_0", "q4_0"):
        for isa in ("neon-i8mm", "neon", "neon-dotprod", "scalar"):
            assert f"shakespeare-{quant}.gguf ({isa}): logits" in out, out
    # the driver's GGUF reader refuses a truncated file and a wrong magic with a message, no crash
    assert "truncated.gguf: exit 2: generate_gguf: tensor data past the end of the file" in out, out
    assert "bad-magic.gguf: exit 2: generate_gguf: not a GGUF file (bad magic)" in out, out
