"""Snapshot builds from the declarative `Image` through the official TypeScript SDK
`@daytona/sdk`, unmodified: the build context goes up through the AWS SDK to the HTTPS S3
endpoint, build output streams to `onLogs` while the build runs, and a sandbox from the
built snapshot sees the copied file."""

from tsrun import run_ts


def test_the_typescript_sdk_builds_an_image_with_a_local_file_and_streams_its_logs(s3_server, tmp_path):
    ctx = tmp_path / "a.txt"
    ctx.write_text("alpha from the typescript context\n")
    r = run_ts(
        "image_build.mjs",
        s3_server,
        NODE_EXTRA_CA_CERTS=str(s3_server.data_dir / "tls" / "ca.pem"),
        SNAPSHOT="ts-img",
        CONTEXT_FILE=str(ctx),
    )
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
