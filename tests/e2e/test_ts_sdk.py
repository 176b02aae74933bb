"""The seed's k3s walk-through (with harmless commands) through the official TypeScript SDK
`@daytona/sdk`, unmodified, from npm."""

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
from daytona import CreateSnapshotParams, Daytona, DaytonaConfig

from harness import API_KEY, BUSYBOX

TS_DIR = Path(__file__).parent / "ts"


def test_the_typescript_sdk_runs_the_seed_k3s_flow(cove):
    if not (TS_DIR / "node_modules" / "@daytona" / "sdk").is_dir():
        pytest.fail("tests/e2e/ts/node_modules is missing: run scripts/setup.sh (make test does)")
    server = cove(extra=["--default-snapshot", "k3s-snap"])
    Daytona(DaytonaConfig(api_key=API_KEY, api_url=server.api_url)).snapshot.create(
        CreateSnapshotParams(name="k3s-snap", image=BUSYBOX)
    )
    env = dict(os.environ, DAYTONA_API_URL=server.api_url, DAYTONA_API_KEY=API_KEY)
    out = subprocess.run(
        [shutil.which("node") or "node", "seed_k3s_flow.mjs"], cwd=TS_DIR, env=env, capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr + out.stdout
    r = json.loads(out.stdout.strip().splitlines()[-1])
    assert r["exitCode"] == 3
    assert r["result"] == "installing\nwarn\n"
    assert r["asyncReturnedMs"] < 1500, "async: true must answer before the command ends"
    assert "tick3" in r["logs"]
    assert r["streamed"] == {"out": "out1\nout2\n", "err": "err1\n"}
    assert r["unknownSession"] is True
    assert r["pods"] == "services: {}\n"
    assert server.api("GET", "/sandbox")[1]["items"] == []
