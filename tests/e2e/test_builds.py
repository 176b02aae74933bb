"""Snapshot builds from Dockerfiles and the SDK's declarative `Image`, through the official
Python SDK (unmodified) and the API: real RUN steps in runc, the step cache, build logs that
stream while the build runs, contexts uploaded through the S3 endpoint, and failures that name
the failing step."""

import time

import pytest
from daytona import (
    CreateSandboxFromSnapshotParams,
    CreateSnapshotParams,
    Daytona,
    DaytonaConfig,
    DaytonaError,
    Image,
    Resources,
)

from harness import API_KEY, BUSYBOX, Registry


@pytest.fixture
def builds(s3_server):
    return s3_server, Daytona(DaytonaConfig(api_key=API_KEY, api_url=s3_server.api_url))


def build(server, name, dockerfile, **extra):
    st, snap = server.api("POST", "/snapshots", {"name": name, "buildInfo": {"dockerfileContent": dockerfile, "contextHashes": []}, **extra})
    assert st == 200, snap
    return server.wait_state(snap["id"], timeout=120)


def logs(server, snap_id):
    st, body = server.api("GET", f"/snapshots/{snap_id}/build-logs-url")
    assert st == 200, body
    assert "?" not in body["url"]
    import urllib.request

    req = urllib.request.Request(body["url"] + "?follow=false", headers={"Authorization": f"Bearer {API_KEY}"})
    with urllib.request.urlopen(req, timeout=10) as r:
        return r.read().decode()


def exec_in(daytona, snapshot, command):
    sandbox = daytona.create(CreateSandboxFromSnapshotParams(snapshot=snapshot))
    try:
        return sandbox.process.exec(command).result
    finally:
        sandbox.delete()


MULTI_STAGE = f"""\
FROM {BUSYBOX} AS builder
RUN mkdir -p /out && echo built-in-stage-one > /out/artifact
FROM {BUSYBOX}
ARG GREETING=hello
COPY --from=builder /out/artifact /opt/artifact
WORKDIR /srv/work
RUN echo "$GREETING" > greeting && echo temp > /etc/gone-later
RUN rm /etc/gone-later
RUN echo "appuser:x:1234:1234::/home/appuser:/bin/sh" >> /etc/passwd && mkdir -p /home/appuser
USER appuser
ENTRYPOINT ["sleep", "infinity"]
"""


def test_a_multi_stage_dockerfile_builds_with_workdir_user_and_a_deleted_file(builds):
    server, daytona = builds
    snap = build(server, "multi", MULTI_STAGE)
    assert snap["state"] == "active", snap.get("errorReason")
    assert snap["entrypoint"] == ["sleep", "infinity"]
    assert snap["buildInfo"]["dockerfileContent"] == MULTI_STAGE
    out = exec_in(daytona, "multi", "cat /opt/artifact; pwd; cat greeting; id -u; ls /etc/gone-later 2>&1 || echo gone")
    lines = out.split("\n")
    assert lines[0] == "built-in-stage-one"
    assert lines[1] == "/srv/work"
    assert lines[2] == "hello"
    assert lines[3] == "1234"
    assert lines[-2] == "gone" or lines[-1] == "gone", out


def test_an_unchanged_rebuild_hits_the_cache_and_a_changed_step_reruns_only_from_there(builds):
    server, _ = builds
    df = f"FROM {BUSYBOX}\nRUN echo one > /one\nRUN echo two > /two\nRUN echo three > /three\n"
    first = build(server, "c1", df)
    assert first["state"] == "active", first.get("errorReason")
    t0 = time.monotonic()
    again = build(server, "c2", df)
    assert again["state"] == "active"
    assert time.monotonic() - t0 < 5
    assert again["ref"] == first["ref"], "identical buildInfo reuses the image"
    changed = build(server, "c3", df.replace("echo three", "echo THREE"))
    assert changed["state"] == "active"
    log = logs(server, changed["id"])
    assert log.count("Using cache") == 2, log
    assert changed["ref"] != first["ref"]


def test_a_failing_step_names_itself_its_exit_code_and_its_last_output(builds):
    server, _ = builds
    snap = build(server, "bad", f"FROM {BUSYBOX}\nRUN echo fine\nRUN echo about-to-fail; exit 3\n")
    assert snap["state"] == "build_failed"
    reason = snap["errorReason"]
    assert "RUN echo about-to-fail; exit 3" in reason and "exit code 3" in reason, reason
    assert reason.rstrip().endswith("about-to-fail"), reason
    assert "about-to-fail" in logs(server, snap["id"])


def test_a_dockerfile_that_does_not_parse_is_refused_naming_the_problem(builds):
    server, _ = builds
    st, body = server.api("POST", "/snapshots", {"name": "unparsable", "buildInfo": {"dockerfileContent": f"FROM {BUSYBOX}\nFROBNICATE x\n"}})
    assert st == 400, body
    assert "FROBNICATE" in body["message"] or "line 2" in body["message"], body


def test_the_sdk_image_builder_streams_logs_before_the_build_ends(builds):
    server, daytona = builds
    image = (
        Image.base(BUSYBOX)
        .run_commands("echo hello-from-the-build", "sleep 1", "mkdir -p /data && echo payload > /data/f")
        .env({"A": "b c"})
        .workdir("/home/daytona")
    )
    seen = []
    daytona.snapshot.create(CreateSnapshotParams(name="img", image=image), on_logs=lambda l: seen.append((time.monotonic(), l)))
    texts = [l for _, l in seen]
    assert any("hello-from-the-build" in t for t in texts), texts
    first_build_line = next(t for t, l in seen if "hello-from-the-build" in l)
    created = next(t for t, l in seen if l.startswith("Created snapshot img"))
    assert first_build_line < created
    out = exec_in(daytona, "img", 'echo "$A"; pwd; cat /data/f')
    assert out.split("\n")[:3] == ["b c", "/home/daytona", "payload"], out


def test_local_files_and_dirs_reach_the_build_through_the_s3_endpoint(builds, tmp_path):
    server, daytona = builds
    (tmp_path / "ctx" / "sub").mkdir(parents=True)
    (tmp_path / "ctx" / "a.txt").write_text("alpha\n")
    (tmp_path / "ctx" / "sub" / "b.txt").write_text("beta\n")
    image = (
        Image.base(BUSYBOX)
        .add_local_file(str(tmp_path / "ctx" / "a.txt"), "/app/a.txt")
        .add_local_dir(str(tmp_path / "ctx"), "/app/ctx")
    )
    snap = daytona.snapshot.create(CreateSnapshotParams(name="ctx", image=image))
    assert snap.state == "active"
    out = exec_in(daytona, "ctx", "cat /app/a.txt /app/ctx/sub/b.txt")
    assert out.split("\n")[:2] == ["alpha", "beta"], out


def test_the_seed_gpu_snippet_builds_in_us_east_1_and_sandboxes_are_refused_without_gpus(s3_server):
    daytona = Daytona(DaytonaConfig(api_key=API_KEY, api_url=s3_server.api_url, target="us-east-1"))
    snap = daytona.snapshot.create(
        CreateSnapshotParams(name="gpu-snap", image=Image.base(BUSYBOX), resources=Resources(cpu=1, memory=1, disk=1, gpu=1)),
    )
    assert snap.state == "active" and snap.gpu == 1
    assert snap.region_ids == ["us-east-1"] if hasattr(snap, "region_ids") else True
    with pytest.raises(DaytonaError) as e:
        daytona.create(CreateSandboxFromSnapshotParams(snapshot="gpu-snap"))
    assert "GPU" in str(e.value) and "us-east-1" in str(e.value), str(e.value)


def test_a_sandbox_from_an_image_builds_then_starts_with_the_requested_resources(builds):
    from daytona import CreateSandboxFromImageParams

    server, daytona = builds
    image = Image.base(BUSYBOX).run_commands("echo sandbox-build-line > /built").env({"FROM_IMAGE": "yes"})
    seen = []
    sandbox = daytona.create(
        CreateSandboxFromImageParams(image=image, resources=Resources(cpu=2, memory=4, disk=8), env_vars={"X": "1"}),
        on_snapshot_create_logs=seen.append,
    )
    assert (sandbox.cpu, sandbox.memory, sandbox.disk) == (2, 4, 8)
    assert any("sandbox-build-line" in l for l in seen), seen
    r = sandbox.process.exec('cat /built; echo "$FROM_IMAGE $X"; nproc 2>/dev/null || true')
    assert r.result.split("\n")[:2] == ["sandbox-build-line", "yes 1"], r.result
    cg = next(__import__("pathlib").Path("/sys/fs/cgroup/memory").glob(f"**/{sandbox.id}"))
    assert int((cg / "memory.limit_in_bytes").read_text()) == 4 << 30
    # A second sandbox from the same image reuses the build (snapshotRef).
    again = daytona.create(CreateSandboxFromImageParams(image=image), timeout=60)
    assert again.process.exec("cat /built").result.strip() == "sandbox-build-line"
    st, body = server.api("GET", f"/sandbox/{again.id}/build-logs-url")
    assert st == 200 and "?" not in body["url"]
    for s in (sandbox, again):
        s.delete()


def test_a_sandbox_whose_image_fails_to_build_ends_build_failed_with_the_reason(builds):
    server, _ = builds
    st, sb = server.api("POST", "/sandbox", {"buildInfo": {"dockerfileContent": f"FROM {BUSYBOX}\nRUN exit 7\n"}})
    assert st == 200 and sb["state"] == "pending_build", sb

    def failed():
        s = server.api("GET", f"/sandbox/{sb['id']}")[1]
        return s if s["state"] == "build_failed" else None

    from harness import wait_until

    wait_until(failed, 60, what="build_failed")
    s = failed()
    assert "RUN exit 7" in s["errorReason"] and "exit code 7" in s["errorReason"], s
    assert server.api("DELETE", f"/sandbox/{sb['id']}")[0] == 200
    assert server.api("POST", "/sandbox", {"snapshot": "x", "buildInfo": {"dockerfileContent": f"FROM {BUSYBOX}\n"}})[0] == 400


def test_the_step_cache_is_listed_for_admins_only_and_a_prune_makes_steps_run_again(builds):
    server, _ = builds
    df = f"FROM {BUSYBOX}\nRUN echo cached-step > /c\n"
    assert build(server, "p1", df)["state"] == "active"
    st, cache = server.api("GET", "/builds/cache")
    assert st == 200, cache
    steps = [e["step"] for e in cache["entries"]]
    assert any("RUN echo cached-step > /c" in s for s in steps), steps
    assert cache["count"] == len(cache["entries"]) and cache["totalBytes"] >= 0
    st, org = server.api("POST", "/organizations", {"name": "other team"})
    other = org["apiKey"]["value"]
    assert server.api("GET", "/builds/cache", key=other)[0] == 403
    assert server.api("DELETE", "/builds/cache", key=other)[0] == 403
    st, pruned = server.api("DELETE", "/builds/cache")
    assert st == 200 and pruned["entriesRemoved"] >= 1, pruned
    assert server.api("GET", "/builds/cache")[1]["count"] == 0
    # After the prune the same step runs again (a new last step avoids the snapshotRef reuse).
    again = build(server, "p2", df + "RUN true\n")
    assert again["state"] == "active"
    assert "Using cache" not in logs(server, again["id"])


def test_a_build_killed_with_the_server_runs_again_after_the_restart(builds):
    server, _ = builds
    df = f"FROM {BUSYBOX}\nRUN echo slow-step-started; sleep 3; echo slow-step-done > /done\n"
    st, snap = server.api("POST", "/snapshots", {"name": "durable", "buildInfo": {"dockerfileContent": df, "contextHashes": []}})
    assert st == 200
    from harness import wait_until

    wait_until(lambda: "slow-step-started" in logs(server, snap["id"]), 30, what="the slow step to start")
    server.kill()  # SIGKILL mid-step
    server.start()
    done = server.wait_state(snap["id"], timeout=120)
    assert done["state"] == "active", done.get("errorReason")
    log = logs(server, snap["id"])
    assert "slow-step-started" in log and "Build finished" in log, log
    # Nothing of the killed step is left mounted or running.
    mounts = [l.split()[1] for l in open("/proc/mounts")]
    assert not [m for m in mounts if m.startswith(str(server.data_dir)) and ("/build-tmp/" in m or "/.steps/" in m)]
    import subprocess

    from containers import ids

    left = ids(server.net["runc_root"])
    assert not [c for c in left if c.startswith("step.")], left


def test_a_dockerfile_can_build_from_an_image_pushed_to_the_built_in_registry(builds, registry):
    import subprocess

    server, daytona = builds
    org = server.api("GET", "/object-storage/push-access")[1]["organizationId"]
    here = server.url.split("://", 1)[1]
    src = registry.url.split("://", 1)[1]
    p = subprocess.run(
        ["skopeo", "copy", "--src-tls-verify=false", "--dest-tls-verify=false", "--dest-creds", f"x:{API_KEY}",
         f"docker://{src}/busybox:1", f"docker://{here}/{org}/base:1.0"],
        capture_output=True, text=True,
    )
    assert p.returncode == 0, p.stderr
    snap = build(server, "from-own", f"FROM {here}/{org}/base:1.0\nRUN echo on-top > /on-top\n")
    assert snap["state"] == "active", snap.get("errorReason")
    assert exec_in(daytona, "from-own", "cat /on-top").strip() == "on-top"
    st, other = server.api("POST", "/organizations", {"name": "intruder"})
    key = other["apiKey"]["value"]
    st, s2 = server.api("POST", "/snapshots", {"name": "steal", "buildInfo": {"dockerfileContent": f"FROM {here}/{org}/base:1.0\n"}}, key=key)
    assert st == 200
    failed = server.wait_state(s2["id"], key=key)
    assert failed["state"] == "build_failed" and "not found" in failed["errorReason"], failed


# Stand-ins for Debian's tools in a busybox image: they log how they were called and leave a
# trace, so the SDK's exact `Image.debian_slim()` Dockerfile can be built step by step here
# without installing compilers from the network.
DEBIAN_STUBS = [
    ("usr/bin/apt-get", b'#!/bin/sh\necho "stub apt-get $*"\n[ "$1" = install ] && for p in "$@"; do touch "/usr/bin/$p"; chmod +x "/usr/bin/$p"; done\nexit 0\n', 0o755),
    ("usr/local/bin/pip", b'#!/bin/sh\necho "stub pip $*"\n', 0o755),
    ("usr/local/bin/python", b'#!/bin/sh\necho "stub python $*"\necho "$*" >> /python-calls\n', 0o755),
    ("usr/bin/debconf-set-selections", b'#!/bin/sh\ncat > /debconf-selections\n', 0o755),
]


def test_the_sdks_debian_slim_image_builds_step_by_step(s3_cove, tmp_path):
    import mkimage

    # The SDK itself names a Docker Hub image here (`FROM python:3.12.10-slim-bookworm`), so
    # this test, and only this one, gives its server a docker.io mirror: a registry of its own
    # holding the stubbed busybox under that one name. (The real Debian image would have to
    # install gcc, gfortran and build-essential from the network, far past this test's time.)
    hub = Registry(tmp_path / "docker-hub-stand-in")
    try:
        mkimage.push_image(hub.url, "library/python", ["3.12.10-slim-bookworm"], seed="slim", files=DEBIAN_STUBS)
        server = s3_cove(docker_hub_mirror=hub.url)
        daytona = Daytona(DaytonaConfig(api_key=API_KEY, api_url=server.api_url))
        image = Image.debian_slim("3.12").pip_install("requests")
        assert image.dockerfile().startswith("FROM python:3.12.10-slim-bookworm\n"), image.dockerfile()
        seen = []
        snap = daytona.snapshot.create(CreateSnapshotParams(name="slim", image=image), on_logs=seen.append)
    finally:
        hub.stop()
    assert snap.state == "active"
    log = "\n".join(seen)
    assert "stub apt-get install -y gcc gfortran build-essential" in log, log
    assert "stub pip install --upgrade pip" in log
    out = exec_in(daytona, "slim", "ls /usr/bin/gfortran && cat /debconf-selections /python-calls")
    assert out.split("\n")[:3] == ["/usr/bin/gfortran", "debconf debconf/frontend select Noninteractive", "-m pip install requests"], out
