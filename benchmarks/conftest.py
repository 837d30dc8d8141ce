import sys
from pathlib import Path

# the in-memory peers (ours and h2) live with the interop tests
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests" / "interop"))
