#!/usr/bin/env python3
"""tools/quantize.py: write a Hugging Face Llama/Mistral checkpoint as a GGUF file.

    python tools/quantize.py HF_DIR OUT.gguf --type q4_0|q8_0|f16|bf16 [--threads N]

A thin wrapper around pyllm.gguf_export (same as `pyllm quantize`)."""
import os
import sys

try:
    import pyllm  # noqa: F401
except ImportError:  # run from a source checkout
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from pyllm.gguf_export import main

if __name__ == "__main__":
    sys.exit(main(prog="quantize.py"))
