"""Snapshot builds from the declarative `Image` through the official TypeScript SDK
`@daytona/sdk`, unmodified: the build context goes up through the AWS SDK to the HTTPS S3
endpoint, build output streams to `onLogs` while the build runs, and a sandbox from the
built snapshot sees the copied file."""

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from harness import API_KEY

TS_DIR = Path(__file__).parent / "ts"


def test_the_typescript_sdk_builds_an_image_with_a_local_file_and_streams_its_logs(s3_server, tmp_path):
    if not (TS_DIR / "node_modules" / "@daytona" / "sdk").is_dir():
        pytest.fail("tests/e2e/ts/node_modules is missing: run scripts/setup.sh (make test does)")
    ctx = tmp_path / "a.txt"
    ctx.write_text("alpha from the typescript context\n")
    env = dict(
        os.environ,
        DAYTONA_API_URL=s3_server.api_url,
        DAYTONA_API_KEY=API_KEY,
        NODE_EXTRA_CA_CERTS=str(s3_server.data_dir / "tls" / "ca.pem"),
        SNAPSHOT="ts-img",
        CONTEXT_FILE=str(ctx),
    )
    out = subprocess.run(
        [shutil.which("node") or "node", "image_build.mjs"], cwd=TS_DIR, env=env, capture_output=True, text=True, timeout=180
    )
    assert out.returncode == 0, out.stderr + out.stdout
    r = json.loads(out.stdout.strip().splitlines()[-1])
    # The TS SDK keeps the path as given: `COPY /tmp/…/a.txt /app/a.txt`, the tar holding it
    # without its leading slash.
    assert f"COPY {ctx} /app/a.txt" in r["dockerfile"], r["dockerfile"]
    assert r["state"] == "active"

    # onLogs gets chunks as they arrive (trimEnd'ed), which may hold several lines.
    timed = [(chunk["ms"], line) for chunk in r["logs"] for line in chunk["line"].split("\n")]
    lines = [l for _, l in timed]
    assert lines[0].startswith("Creating snapshot ts-img ("), lines
    built = [i for i, l in enumerate(lines) if l.strip() == "hello-from-ts-build"]
    done = [i for i, l in enumerate(lines) if l.startswith("Successfully built")]
    created = [i for i, l in enumerate(lines) if l.startswith("Created snapshot ts-img")]
    assert built, f"the RUN step's output never reached onLogs: {lines}"
    assert done, lines
    assert created == [len(lines) - 1], lines
    assert built[0] < done[0] < created[0], lines
    # Streamed while the build ran (the `sleep 3` step came after it), not handed over at the end.
    assert timed[built[0]][0] + 1000 <= timed[done[0]][0], timed

    assert r["exitCode"] == 0, r
    assert r["result"] == "alpha from the typescript context\n", r
    st, snap = s3_server.api("GET", "/snapshots/ts-img")
    assert st == 200 and snap["state"] == "active", snap
    assert snap["buildInfo"]["dockerfileContent"] == r["dockerfile"]
    assert s3_server.api("GET", "/sandbox")[1]["items"] == []
