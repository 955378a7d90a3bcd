"""Make the shared transformers-reference helpers of this folder importable (pytest uses importlib mode)."""

import sys
from pathlib import Path

_HERE = str(Path(__file__).parent)
if _HERE not in sys.path:
    sys.path.insert(0, _HERE)
