"""Make ``pillarbox`` importable from the source tree when it is not installed."""

import sys
from pathlib import Path

try:
    import pillarbox  # noqa: F401
except ImportError:  # pragma: no cover - depends on how the venv was set up
    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "src"))
