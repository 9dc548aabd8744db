"""python -m pyllm: same as the pyllm command."""
import sys

from .cli import main

sys.exit(main())
