"""Shared preamble of the benchmarks: they measure the release binaries, and use the test
fixtures (image builder, registry and server harness). Import it before `harness`."""

import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "fixtures"))
os.environ.setdefault("COVE_BIN", str(ROOT / "target" / "release" / "cove"))
os.environ.setdefault("COVE_AGENT_BIN", str(ROOT / "target" / "release" / "cove-agent"))


def row(name, xs, base=None, unit="ms", width=52, digits=2):
    """One table line: p50 and p90 of `xs` (seconds, or raw values when unit != "ms"), and
    the ratio of medians to `base` (a baseline from the same run)."""
    import statistics

    scale = 1000 if unit == "ms" else 1
    med = statistics.median(xs) * scale
    p90 = sorted(xs)[max(0, int(len(xs) * 0.9) - 1)] * scale
    ratio = f"{statistics.median(xs) / statistics.median(base):6.2f}x" if base else "   1.00x"
    return f"{name:<{width}} {med:9.{digits}f} {p90:9.{digits}f} {ratio}"
