"""Shared preamble of the benchmarks: they measure the release binaries, and use the test
fixtures (image builder, registry and server harness). Import it before `harness`."""

import os
import shutil
import sys
import tempfile
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


class Scratch:
    """One benchmark's scratch space, as a context manager: a temporary directory (0711, so
    sandboxes, an unprivileged host uid, pass through to the data dirs under it) and a local
    registry per name in `registries` (`registry` is the first), plus `server`, the Cove the
    benchmark starts, once it sets it. Leaving the block tears the run down in this order:
    the server (harness `Cove.cleanup`: stop it, `runc delete` of what it left running,
    unmount, network and cgroups), the `at_exit` callbacks (the last added first), the
    registries, then the directory."""

    def __init__(self, prefix="cvb", dir="/tmp", registries=("registry",)):
        self.prefix, self.dir, self.names = prefix, dir, registries
        self.server = None
        self.registries = []
        self.callbacks = []

    def __enter__(self):
        from harness import Registry  # after the environment above is set

        self.tmp = Path(tempfile.mkdtemp(prefix=self.prefix, dir=self.dir))
        self.tmp.chmod(0o711)
        self.registries = [Registry(self.tmp / name) for name in self.names]
        return self

    @property
    def registry(self):
        return self.registries[0]

    def at_exit(self, f):
        """Runs `f()` at teardown, after the server stopped and before the registries, the
        last added first (as `contextlib.ExitStack` does)."""
        self.callbacks.append(f)

    def __exit__(self, *exc):
        if self.server:
            self.server.cleanup()
        for f in reversed(self.callbacks):
            f()
        for registry in self.registries:
            registry.stop()
        shutil.rmtree(self.tmp, ignore_errors=True)
        return False
