"""Sandboxes through the official Daytona Python SDK (unmodified): real runc sandboxes with
the cove agent inside, from snapshots pulled out of a real registry."""

import json
import subprocess
import time

import pytest
from daytona import CreateSandboxFromSnapshotParams, CreateSnapshotParams, Daytona, DaytonaConfig, SessionExecuteRequest
from daytona import SandboxState as SdkSandboxState

from harness import API_KEY, BUSYBOX, BUSYBOX_PYTHON, wait_until


@pytest.fixture
def sbx(cove):
    """A server with a default snapshot, and an SDK client for it."""
    server = cove(extra=["--default-snapshot", "default-snap", "--sandbox-pids-limit", "256"])
    daytona = Daytona(DaytonaConfig(api_key=API_KEY, api_url=server.api_url))
    daytona.snapshot.create(CreateSnapshotParams(name="default-snap", image=BUSYBOX))
    return server, daytona


def test_create_with_no_arguments_starts_the_default_snapshot_and_runs_commands_through_a_shell(sbx):
    server, daytona = sbx
    sandbox = daytona.create()
    assert sandbox.state == SdkSandboxState.STARTED
    r = sandbox.process.exec("echo hello; echo oops >&2; exit 3")
    assert r.exit_code == 3
    assert r.result == "hello\noops\n"
    assert sandbox.process.exec("echo $DAYTONA_SANDBOX_ID").result.strip() == sandbox.id
    sandbox.delete()


def test_the_seed_compose_flow_uploads_a_file_and_reads_it_back(sbx):
    server, daytona = sbx
    sandbox = daytona.create(CreateSandboxFromSnapshotParams(snapshot="default-snap"))
    compose = "services:\n  web:\n    image: nginx:alpine\n"
    sandbox.fs.upload_file(compose.encode(), "docker-compose.yml")
    r = sandbox.process.exec("cat docker-compose.yml && pwd")
    assert r.result == compose + "/root\n", "relative paths land in the image's working directory"
    sandbox.fs.upload_file(b"nested", "deep/er/file.txt")
    assert sandbox.process.exec("cat /root/deep/er/file.txt").result == "nested"
    sandbox.delete()


def test_sessions_keep_state_and_async_commands_stream_their_logs(sbx):
    server, daytona = sbx
    sandbox = daytona.create()
    sandbox.process.create_session("s1")
    r = sandbox.process.execute_session_command("s1", SessionExecuteRequest(command="cd /tmp && export GREETING=hi"))
    assert r.exit_code == 0
    r = sandbox.process.execute_session_command("s1", SessionExecuteRequest(command="echo $GREETING from $(pwd)"))
    assert r.exit_code == 0 and r.output.strip() == "hi from /tmp"
    started = time.monotonic()
    cmd = sandbox.process.execute_session_command(
        "s1", SessionExecuteRequest(command="for i in 1 2 3; do echo tick$i; sleep 0.3; done; echo bad >&2", run_async=True)
    )
    assert time.monotonic() - started < 0.8, "an async command answers at once"
    logs = wait_until(
        lambda: (l := sandbox.process.get_session_command_logs("s1", cmd.cmd_id)) and "bad" in l.stderr and l,
        10,
        0.1,
        "the async command to finish",
    )
    assert logs.stdout == "tick1\ntick2\ntick3\n"
    assert sandbox.process.get_session_command("s1", cmd.cmd_id).exit_code == 0
    sandbox.process.delete_session("s1")
    sandbox.delete()


def test_stop_and_start_keep_the_sandboxes_files(sbx):
    server, daytona = sbx
    sandbox = daytona.create()
    sandbox.fs.upload_file(b"still here", "keep.txt")
    sandbox.stop()
    assert daytona.get(sandbox.id).state == SdkSandboxState.STOPPED
    sandbox.start()
    assert sandbox.process.exec("cat keep.txt").result == "still here"
    sandbox.delete()


def test_list_shows_the_sandbox_with_its_labels(sbx):
    server, daytona = sbx
    sandbox = daytona.create(CreateSandboxFromSnapshotParams(labels={"team": "cove"}))
    items = list(daytona.list())
    assert [s.id for s in items] == [sandbox.id]
    assert items[0].labels["team"] == "cove" and items[0].labels["code-toolbox-language"] == "python"
    sandbox.delete()


def test_code_run_uses_python_when_the_image_has_it(cove, registry_with_python):
    server = cove()
    daytona = Daytona(DaytonaConfig(api_key=API_KEY, api_url=server.api_url))
    daytona.snapshot.create(CreateSnapshotParams(name="py", image=BUSYBOX_PYTHON))
    sandbox = daytona.create(CreateSandboxFromSnapshotParams(snapshot="py"))
    r = sandbox.process.code_run("import sys\nprint(sum(range(10)), sys.version_info[0])")
    assert r.exit_code == 0, r.result
    assert r.result.strip() == "45 3"
    sandbox.delete()


def test_delete_leaves_no_mount_netns_veth_loop_device_or_cgroup_behind(sbx):
    server, daytona = sbx
    sandbox = daytona.create()
    bundle = server.data_dir / "sandboxes" / sandbox.id
    assert bundle.exists()
    sandbox.delete()
    assert not bundle.exists()
    mounts = open("/proc/mounts").read()
    assert sandbox.id not in mounts
    # The sandbox's own netns and host veth are named prefix + its first 8 id characters (the
    # warm pool's prepared sandboxes have theirs).
    own = server.net["prefix"] + sandbox.id.replace("-", "")[:8].lower()
    netns = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert own not in [n.split()[0] for n in netns.splitlines() if n.strip()]
    links = subprocess.run(["ip", "-j", "link"], capture_output=True, text=True).stdout
    assert not [l for l in json.loads(links) if l.get("ifname", "").startswith(own)]
    loops = subprocess.run(["losetup", "-a"], capture_output=True, text=True).stdout
    assert sandbox.id not in loops
    for ctrl in ("memory", "cpu", "pids"):
        assert not list((__import__("pathlib").Path("/sys/fs/cgroup") / ctrl).glob(f"**/{sandbox.id}"))


def test_creating_from_an_inactive_snapshot_reactivates_it_and_records_its_use(sbx):
    server, daytona = sbx
    snap = daytona.snapshot.get("default-snap")
    assert server.api("POST", f"/snapshots/{snap.id}/deactivate")[0] == 204
    sandbox = daytona.create(CreateSandboxFromSnapshotParams(snapshot="default-snap"))
    assert sandbox.state == SdkSandboxState.STARTED
    again = daytona.snapshot.get("default-snap")
    assert again.state.value == "active"
    assert again.last_used_at is not None
    sandbox.delete()


def test_without_a_snapshot_the_error_names_the_missing_default_or_the_option(cove):
    server = cove()
    st, body = server.api("POST", "/sandbox", {"env": {}, "labels": {}})
    assert st == 400 and "default snapshot cove-small does not exist" in body["message"], body
    assert "cove image bootstrap --general" in body["message"], body
    server = cove(extra=["--default-snapshot", ""])
    st, body = server.api("POST", "/sandbox", {"env": {}, "labels": {}})
    assert st == 400 and "--default-snapshot" in body["message"], body
    st, body = server.api("POST", "/sandbox", {"snapshot": "nope"})
    assert st == 400 and "snapshot nope not found" in body["message"], body


def test_a_forced_stop_kills_at_once_and_a_bad_force_value_is_refused(sbx):
    server, daytona = sbx
    sandbox = daytona.create()
    st, body = server.api("POST", f"/sandbox/{sandbox.id}/stop?force=maybe")
    assert st == 400 and "force" in body["message"], body
    st, body = server.api("POST", f"/sandbox/{sandbox.id}/stop?forse=true")
    assert st == 400 and "forse" in body["message"], "an unknown parameter is refused, never ignored"
    assert daytona.get(sandbox.id).state == SdkSandboxState.STARTED, "the refusals stopped nothing"
    sandbox.stop(force=True)
    assert sandbox.state == SdkSandboxState.STOPPED
    sandbox.start()
    assert sandbox.process.exec("echo back").result.strip() == "back"
    sandbox.delete()


def test_labels_can_be_replaced_and_resources_come_from_the_snapshot(sbx):
    server, daytona = sbx
    sandbox = daytona.create(CreateSandboxFromSnapshotParams(env_vars={"A": "1"}))
    assert (sandbox.cpu, sandbox.memory, sandbox.disk) == (1, 1, 3)
    assert sandbox.process.exec("echo $A").result == "1\n"
    sandbox.set_labels({"stage": "test"})
    assert daytona.get(sandbox.id).labels == {"stage": "test"}
    st, body = server.api("POST", "/sandbox", {"snapshot": "default-snap", "cpu": 4})
    assert st == 400 and "resources" in body["message"]
    sandbox.delete()


def unrecorded_bundles(server):
    """Sandbox bundles on disk that the API does not list: the warm pool's prepared ones."""
    listed = {s["id"] for s in server.api("GET", "/sandbox")[1]["items"]}
    root = server.data_dir / "sandboxes"
    return {p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")} - listed


def test_a_create_taken_from_the_warm_pool_gets_the_requests_env_and_keeps_it_across_a_restart(sbx):
    server, daytona = sbx
    first = daytona.create()  # marks the default snapshot as in use: the pool fills behind it
    wait_until(lambda: len(unrecorded_bundles(server)) >= 2, 30, what="two prepared sandboxes")
    prepared = unrecorded_bundles(server)
    sandbox = daytona.create(CreateSandboxFromSnapshotParams(env_vars={"GREETING": "hello pool", "PATH": "/x:/bin"}))
    assert sandbox.id in prepared, "the create did not take a prepared sandbox"
    r = sandbox.process.exec('echo "$GREETING|$PATH|$DAYTONA_SANDBOX_ID"')
    assert r.result.strip() == f"hello pool|/x:/bin|{sandbox.id}"
    sandbox.stop()
    sandbox.start()
    assert sandbox.process.exec('echo "$GREETING"').result.strip() == "hello pool"
    # The agent consumed the env file; nothing is left for the sandbox to find.
    assert sandbox.process.exec("ls /run/cove").result.split() == ["toolbox.sock"]
    wait_until(lambda: len(unrecorded_bundles(server)) >= 2, 30, what="the pool refilled")
    for s in (first, sandbox):
        s.delete()


def test_prepared_sandboxes_are_removed_when_the_server_stops_and_after_a_crash(sbx):
    server, daytona = sbx
    daytona.create().delete()
    wait_until(lambda: len(unrecorded_bundles(server)) >= 2, 30, what="two prepared sandboxes")
    server.kill(__import__("signal").SIGTERM)
    assert not list((server.data_dir / "sandboxes").glob("*/spec.json")), "a graceful stop drains the pool"
    server.start()
    daytona.create().delete()
    wait_until(lambda: len(unrecorded_bundles(server)) >= 2, 30, what="the pool refilled")
    server.kill()  # SIGKILL: no drain
    left = {p.parent.name for p in (server.data_dir / "sandboxes").glob("*/spec.json")}
    assert len(left) >= 2
    server.start()
    # Reconcile runs in the background after a start; an API request waits for it.
    assert server.api("GET", "/sandbox")[0] == 200
    assert not {p.parent.name for p in (server.data_dir / "sandboxes").glob("*/spec.json")} & left
    from containers import ids

    assert not ids(server.net["runc_root"]) & left
