"""Shared preamble of the benchmarks: they measure the release binaries, and use the test
fixtures (image builder, registry and server harness). Import it before `harness`."""

import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "fixtures"))
os.environ.setdefault("COVE_BIN", str(ROOT / "target" / "release" / "cove"))
os.environ.setdefault("COVE_AGENT_BIN", str(ROOT / "target" / "release" / "cove-agent"))
